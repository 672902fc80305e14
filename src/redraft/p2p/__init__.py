"""Prompt-to-Prompt (Hertz et al. 2023) and the controls around it: `controls` (the one `Controls`
schema), `plan` (prompts -> `EditPlan`), `tokens`, `attention` (processors), `blend` (LocalBlend),
`layout` (layout guidance), `features` (Plug-and-Play injection), `renoise`."""
