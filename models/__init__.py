"""eofm.models: sensor-aware ViT encoders, tokenizers, masking, the registry and the input contract.

Importing this package also registers every encoder with timm (as ``eofm_<name>`` and ``<name>``),
so exported encoders load with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` as well as
with :func:`from_pretrained`.
"""

from __future__ import annotations

from . import tokenizers as _tokenizers
from .attention import (
    BACKENDS,
    Attention,
    CrossAttention,
    attend,
    attention_backend,
    set_attention_backend,
    xformers_available,
)
from .contract import InputContract, check_input
from .decoders import (
    CrossAttentionDecoder,
    GroupPixelHeads,
    MAEDecoder,
    MultiScaleUpsampler,
    decoder_encoding,
)
from .heads import LinearHead, MLPHead, PredictionMLP, ProjectionMLP, SegmentationDecoder
from .hub import from_pretrained, save_pretrained
from .masking import (
    gather_tokens,
    grouped_masking,
    ids_from_mask,
    masked_ids,
    num_keep,
    random_masking,
)
from .normalise import normalise_input
from .pos_embed import sincos_1d, sincos_2d
from .registry import PATCH_SIZES, SIZES, create_model, list_models, register_model
from .resnet import ResNetEncoder
from .tokenizers import *  # noqa: F403 (re-exports tokenizers.__all__)
from .vit import Block, ViTEncoder

__all__ = [
    "BACKENDS",
    "PATCH_SIZES",
    "SIZES",
    "Attention",
    "Block",
    "CrossAttentionDecoder",
    "GroupPixelHeads",
    "LinearHead",
    "MAEDecoder",
    "MLPHead",
    "MultiScaleUpsampler",
    "PredictionMLP",
    "ProjectionMLP",
    "SegmentationDecoder",
    "decoder_encoding",
    "CrossAttention",
    "InputContract",
    "ResNetEncoder",
    "ViTEncoder",
    "attend",
    "attention_backend",
    "check_input",
    "create_model",
    "from_pretrained",
    "gather_tokens",
    "grouped_masking",
    "ids_from_mask",
    "list_models",
    "masked_ids",
    "normalise_input",
    "num_keep",
    "random_masking",
    "register_model",
    "set_attention_backend",
    "save_pretrained",
    "sincos_1d",
    "sincos_2d",
    "xformers_available",
    *_tokenizers.__all__,
]
