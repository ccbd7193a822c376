"""Image + clinical-note classifiers ("arms"), built from small configurations only (no download).

Every arm is a ``torch.nn.Module`` with the same call::

    logits = arm(pixels=..., input_ids=..., attention_mask=..., note_present=..., image_present=...)

``pixels`` are normalised ``(N, 3, S, S)`` floats
(:func:`~clinaudit.models.multimodal_config.normalise_pixels`), ``input_ids`` and
``attention_mask`` come from :func:`clinaudit.models.text_tokenizer.encode_notes` (``[CLS]`` at
position 0), ``note_present`` / ``image_present`` are ``(N,)`` bools; the output is ``(N, K)``
class logits (softmax gives probabilities).

Arms
----
``image_only``
    A timm Vision Transformer (``timm.create_model(image_arch, pretrained=False, img_size,
    patch_size, embed_dim, depth, num_heads)``) whose class token feeds a linear head.
``text_only``
    A ``transformers.BertModel`` from a small ``BertConfig`` whose vocabulary size and ``[PAD]``
    id are the locally trained tokenizer's; the pooled text embedding is the last hidden state at
    :data:`~clinaudit.models.text_tokenizer.CLS_POSITION` (``[CLS]``), which the encoder checks.
``late_fusion``
    Score combination of a trained ``image_only`` and ``text_only`` arm (frozen):
    ``w_img * log p_img + note_present * (w_txt * log p_txt + b_txt) + b``. A missing note thus
    contributes nothing, rather than the text arm's prior for an empty note. The ``2 + 2K``
    parameters are fitted on the validation split
    (:func:`clinaudit.models.multimodal_train.fit_late_fusion`); ``w_img`` and ``w_txt`` act as
    per-modality temperatures, so calibrated log probabilities are combined, not raw scores.
``early_fusion``
    Own ViT and BERT encoders; every text token attends to the image patch tokens through one
    ``nn.MultiheadAttention`` block (query: text, key/value: a learned "no image" token plus the
    patches), residual + feed-forward, and the head reads position 0 (``[CLS]``). A missing note
    adds a learned "note missing" vector to the text tokens; a missing image masks the patches
    (the "no image" token is always there, so attention never sees an empty key set).
``vilt``
    A unified single-stream encoder, ``transformers.ViltModel`` from a small ``ViltConfig``: text
    tokens and patch embeddings in one transformer, pooled at the text ``[CLS]``. Patch
    embeddings are computed here with ViLT's own layers on the full patch grid (ViLT's
    ``visual_embed`` would shuffle patches with the global RNG, even in evaluation).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn
from transformers import BertConfig, BertModel, ViltConfig, ViltModel

from clinaudit.models.multimodal_config import ARMS, MultimodalConfig, UnknownArmError
from clinaudit.models.text_tokenizer import CLS_POSITION

__all__ = [
    "EarlyFusionArm",
    "ImageEncoder",
    "ImageOnlyArm",
    "LateFusionArm",
    "TextEncoder",
    "TextOnlyArm",
    "ViltArm",
    "build_arm",
    "count_parameters",
]


class ImageEncoder(nn.Module):
    """timm Vision Transformer: ``(N, 3, S, S)`` -> patch tokens ``(N, P, D)`` and class token."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import VisionTransformer

        self.vit = timm.create_model(
            config.image_arch,
            pretrained=False,
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.image_dim,
            depth=config.image_depth,
            num_heads=config.image_heads,
            mlp_ratio=2.0,
            num_classes=0,
            drop_rate=config.dropout,
        )
        if not isinstance(self.vit, VisionTransformer):
            raise ValueError(
                f"image_arch={config.image_arch!r} builds a {type(self.vit).__name__}; the image "
                "encoder needs a timm VisionTransformer family name, e.g. 'vit_tiny_patch16_224'"
            )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (prefix tokens removed) and the pooled (class-token) embedding."""
        tokens = self.vit.forward_features(pixels)
        return tokens[:, self.vit.num_prefix_tokens :], self.vit.forward_head(tokens, True)


class TextEncoder(nn.Module):
    """BERT from a small config; pooled embedding = last hidden state at ``[CLS]`` (position 0)."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.cls_token_id = config.cls_token_id
        bert_config = BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.text_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            intermediate_size=config.text_ffn,
            max_position_embeddings=config.max_length,
            type_vocab_size=1,
            pad_token_id=config.pad_token_id,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``(N, T, D)`` and the pooled ``[CLS]`` state ``(N, D)``.

        Raises
        ------
        ValueError
            If a row does not start with ``[CLS]`` (the pooled state would come from another token).
        """
        if not bool((input_ids[:, CLS_POSITION] == self.cls_token_id).all()):
            raise ValueError(
                f"every note must start with [CLS] (id {self.cls_token_id}) at position "
                f"{CLS_POSITION}; encode notes with clinaudit.models.text_tokenizer.encode_notes"
            )
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, hidden[:, CLS_POSITION]


def _head(width: int, config: MultimodalConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(width), nn.Dropout(config.dropout), nn.Linear(width, config.num_labels)
    )


class ImageOnlyArm(nn.Module):
    """ViT class token -> linear head; ignores the note."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.image = ImageEncoder(config)
        self.head = _head(config.image_dim, config)

    def forward(self, *, pixels: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, K)``."""
        return self.head(self.image(pixels)[1])


class TextOnlyArm(nn.Module):
    """BERT ``[CLS]`` state -> linear head; ignores the image."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.text = TextEncoder(config)
        self.head = _head(config.text_dim, config)

    def forward(
        self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        """Class logits ``(N, K)``."""
        return self.head(self.text(input_ids, attention_mask)[1])


class LateFusionArm(nn.Module):
    """Weighted sum of a frozen image arm's and text arm's log-probabilities (see module doc)."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.image_arm = ImageOnlyArm(config)
        self.text_arm = TextOnlyArm(config)
        self.weights = nn.Parameter(torch.ones(2))
        self.bias = nn.Parameter(torch.zeros(config.num_labels))
        self.note_bias = nn.Parameter(torch.zeros(config.num_labels))

    def train(self, mode: bool = True) -> LateFusionArm:
        """Set the mode of the fusion weights; the frozen components always stay in eval mode."""
        super().train(mode)
        self.image_arm.eval()
        self.text_arm.eval()
        return self

    def component_log_probs(
        self,
        *,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        **_: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the image arm and of the text arm (no gradient into them)."""
        with torch.no_grad():
            image = torch.log_softmax(self.image_arm(pixels=pixels).float(), dim=1)
            text = self.text_arm(input_ids=input_ids, attention_mask=attention_mask)
            return image, torch.log_softmax(text.float(), dim=1)

    def combine(
        self, image_logp: torch.Tensor, text_logp: torch.Tensor, note_present: torch.Tensor
    ) -> torch.Tensor:
        """Fused logits from component log-probabilities."""
        present = note_present.to(image_logp.dtype).unsqueeze(1)
        text_term = self.weights[1] * text_logp + self.note_bias
        return self.weights[0] * image_logp + present * text_term + self.bias

    def forward(
        self,
        *,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        note_present: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits ``(N, K)``."""
        image, text = self.component_log_probs(
            pixels=pixels, input_ids=input_ids, attention_mask=attention_mask
        )
        return self.combine(image, text, note_present)


class EarlyFusionArm(nn.Module):
    """Text tokens cross-attend to image patches; head on the fused ``[CLS]`` (see module doc)."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        width = config.fusion_dim
        self.image = ImageEncoder(config)
        self.text = TextEncoder(config)
        self.image_proj = nn.Linear(config.image_dim, width)
        self.text_proj = nn.Linear(config.text_dim, width)
        self.no_image = nn.Parameter(torch.zeros(1, 1, width))
        self.note_missing = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.no_image, std=0.02)
        nn.init.trunc_normal_(self.note_missing, std=0.02)
        self.cross = nn.MultiheadAttention(
            width, config.fusion_heads, dropout=config.dropout, batch_first=True
        )
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(2 * width, width),
        )
        self.norm2 = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.num_labels))

    def forward(
        self,
        *,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        note_present: torch.Tensor,
        image_present: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits ``(N, K)``."""
        patches, _ = self.image(pixels)
        n, p = patches.shape[:2]
        keys = torch.cat([self.no_image.expand(n, 1, -1), self.image_proj(patches)], dim=1)
        ignore = torch.cat(
            [
                torch.zeros(n, 1, dtype=torch.bool, device=keys.device),
                (~image_present.to(keys.device)).view(n, 1).expand(n, p),
            ],
            dim=1,
        )
        hidden, _ = self.text(input_ids, attention_mask)
        missing = (~note_present.to(hidden.device)).to(hidden.dtype).view(n, 1, 1)
        query = self.text_proj(hidden) + missing * self.note_missing
        attended, _ = self.cross(query, keys, keys, key_padding_mask=ignore, need_weights=False)
        x = self.norm1(query + attended)
        x = self.norm2(x + self.ffn(x))
        return self.head(x[:, CLS_POSITION])


class ViltArm(nn.Module):
    """``transformers.ViltModel`` (small config), pooled at the text ``[CLS]``; linear head."""

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__()
        self.cls_token_id = config.cls_token_id
        vilt_config = ViltConfig(
            vocab_size=config.vocab_size,
            type_vocab_size=1,
            modality_type_vocab_size=2,
            max_position_embeddings=config.max_length,
            hidden_size=config.text_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            intermediate_size=config.text_ffn,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_channels=3,
            max_image_length=-1,
            pad_token_id=config.pad_token_id,
        )
        self.vilt = ViltModel(vilt_config)
        self.head = _head(config.text_dim, config)

    def forward(
        self,
        *,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_present: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits ``(N, K)``."""
        if not bool((input_ids[:, CLS_POSITION] == self.cls_token_id).all()):
            raise ValueError(f"every note must start with [CLS] (id {self.cls_token_id})")
        emb = self.vilt.embeddings
        patches = emb.patch_embeddings(pixels).flatten(2).transpose(1, 2)
        n, p = patches.shape[:2]
        tokens = torch.cat([emb.cls_token.expand(n, -1, -1), patches], dim=1)
        tokens = emb.dropout(tokens + emb.position_embeddings)
        mask = torch.ones(n, p + 1, dtype=attention_mask.dtype, device=attention_mask.device)
        mask[:, 1:] = image_present.to(mask.device).view(n, 1).to(mask.dtype)
        out = self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=tokens,
            pixel_mask=mask,
        )
        return self.head(out.pooler_output)


_BUILDERS: dict[str, type[nn.Module]] = {
    "image_only": ImageOnlyArm,
    "text_only": TextOnlyArm,
    "late_fusion": LateFusionArm,
    "early_fusion": EarlyFusionArm,
    "vilt": ViltArm,
}


def build_arm(arm: str, config: MultimodalConfig, *, seed: int | None = 0) -> nn.Module:
    """A randomly initialised arm (CPU, training mode); nothing is downloaded.

    Parameters
    ----------
    arm : {"image_only", "text_only", "late_fusion", "early_fusion", "vilt"}
        Which arm.
    config : MultimodalConfig
        Sizes, labels and tokenizer ids.
    seed : int or None
        Seeds the initial weights under ``torch.random.fork_rng`` (the caller's global RNG is
        left as it was); ``None`` draws from the global generator.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    UnknownArmError
        If ``arm`` is not one of :data:`ARMS` (the message names the closest).

    Examples
    --------
    >>> cfg = MultimodalConfig(labels=("a", "b"), vocab_size=120)
    >>> type(build_arm("early_fusion", cfg)).__name__
    'EarlyFusionArm'
    """
    if arm not in _BUILDERS:
        close = difflib.get_close_matches(str(arm), ARMS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownArmError(f"unknown arm {arm!r}; known arms are {list(ARMS)}.{hint}")
    if seed is None:
        return _BUILDERS[arm](config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _BUILDERS[arm](config)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
