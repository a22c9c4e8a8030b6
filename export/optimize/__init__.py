"""`tskit optimize`: the fastest engine and precision on this machine that keeps what users see, as an archive,
within a time budget.

The reference is the archive's fp32 model (eager or TorchScript: its own, or the eager weights it ships for
explanations) behind full-size decoding. Every candidate of the table (candidates.py) runs behind the archive's
own preprocessing and answers to the guard (guard.py) on views of the calibration photos (export/views.py).
`run.optimize_archive` is the sequence, each step a module of this package:

    1. views and reference     the photos' views; the reference's logits on them
    2. judge each candidate    export or quantize it, run it on every view, hold it to the guard
    3. mixed int8              only when no plain int8 passes: the search for layers to keep in floating point,
                               stopped at the deadline the budget leaves it (mixed_int8.py)
    4. forward speed           every passing candidate, every split of the cores (speed.py): the fastest engine
    5. decoder                 the fastest JPEG decoding that still passes, behind that engine (decoders.py)
    6. served split            the archive, built in the work folder, run by its own handler on JPEG requests
                               per split of the cores (speed.py): decoding included, this decides the workers x
                               threads; a tie within noise goes to more workers
    7. archive                 model-config.yaml with that split (the one place that says how the model is
                               served), the whole report in the manifest (output.py)
"""
