"""The front-ends over the `Editor`: the command line (`cli`), batch runs (`batch`), the web app
(`web`) and the demo (`demo`). No library module imports them."""
