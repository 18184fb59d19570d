"""`grouplat evaluate`: the paper's claims as numbers, a baseline side by side (issue 7).

`metrics` holds the measures (PSNR, MIG, DCI, SAP, sliced Wasserstein, a shape classifier; numpy +
scikit-learn), `measure` what is measured on one model, `report` the Markdown, `cli` the command.
"""
