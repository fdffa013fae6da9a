"""Many runs at once: hyperparameter search (`pccore tune`), seed sweeps (`pccore sweep`) and the
paper's tables (`pccore report`). The top of the library: everything below it may be used."""
