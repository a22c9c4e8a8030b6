"""`tskit`: the command line over handlers/ and export/, and the TorchServe process and API helpers."""
