"""The `tinydiff` command line: the flags of every command (main.py, options.py), then one module per command that
checks its flags, calls the engine and prints (train.py, sample.py, eval.py, compare.py, visualize.py, viewer.py,
distill.py, export.py). No diffusion logic lives here."""
