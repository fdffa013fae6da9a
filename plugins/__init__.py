"""pccore's built-in plugins, registered through the `pccore` entry-point group like any other package."""
