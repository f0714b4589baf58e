"""The Ray backend: the local backend's workers as Ray actors across a cluster, tensors pulled
worker-to-worker through Ray's object store. Nothing outside this package imports Ray."""
