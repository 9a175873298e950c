"""Raw record -> tensors. No Beam and no Keras here: pure readers, the spec and TF tokenizers."""
