"""Files in and out: images (`image`), atomic writes (`files`), grids and maps (`draw`), model folders
(`loading`), saved inversions (`inversion_file`), training checkpoints (`checkpoints`)."""
