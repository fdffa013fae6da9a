"""Training runs: assembling a recipe into an engine, the batch feeder and validation split, the run and
its seed loop, evaluation, run directories, checkpoints, files, TensorBoard, CUDA graphs and progress.
Imports the core, recipes and `pccore.parallel`."""
