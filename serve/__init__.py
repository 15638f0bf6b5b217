"""The Ray Serve application: encoder, text encoder and decoder deployments behind one ingress."""
