"""The lab's plumbing, apart from the science: params and their checks, atomic writing, user-facing errors,
devices, dvclive logs, DVC remotes and experiments, and the Dask executor of the stage graph."""
