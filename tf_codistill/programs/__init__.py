"""The programs: absl main modules behind the console scripts and `binaries/*.py`.

`tf-codistill-train` (`train`), `tf-codistill-launch-local` (`launch_local`),
`tf-codistill-evaluate` (`evaluate`) and `tf-codistill-churn` (`churn`). Each
defines its flags, parses gin and makes one call into the library, and has a
`run()` for its console script; `python -m tf_codistill.programs.<name>` and
`python binaries/<name>.py` run the same.

They live in the package so that both `pip install .` and `pip install -e .`
install them with the library (see docs/design.md). This is the only part of
the package that defines flags; no library module imports it.
"""
