"""The paper's networks and their parts (Table 7): layers with second-order-correct
LayerNorm, the encoder f_theta, decoder g_phi, projector h_psi, masking and losses.
Pure Keras: nothing here knows of files, flags or training loops.

Importing this package registers every serializable layer (what `keras.saving.load_model`
needs to load an exported `encoder.keras`)."""

from keras_metamae.models.decoder import Decoder
from keras_metamae.models.encoder import Encoder
from keras_metamae.models.layers import LayerNorm
from keras_metamae.models.layers import MultiHeadSelfAttention
from keras_metamae.models.layers import TokenEmbedding
from keras_metamae.models.layers import TransformerBlock
from keras_metamae.models.projector import Projector

__all__ = ["Decoder", "Encoder", "LayerNorm", "MultiHeadSelfAttention", "Projector",
           "TokenEmbedding", "TransformerBlock"]
