"""The region encoder: any timm backbone, built offline for one region size, giving NCHW feature maps.

timm families disagree on two things we must hide from the rest of the stack:

* layout: ``swin*`` / ``swinv2_*`` feature maps come out NHWC, the others NCHW. We normalise to
  NCHW here, in one place, from the wrapper's declared ``output_fmt``.
* input size: families with a fixed input size (SwinV2, Hiera, ViT, …; timm marks them
  ``fixed_input_size`` in their pretrained config) must be told the region size at creation
  (``img_size=R``), or they refuse it or build the wrong position tables.

Weights never come from a hub: ``pretrained=False``, or a local file through ``checkpoint_path``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from xtstream.errors import ModelConfigError


def _timm():
    import timm  # deferred: timm pulls torchvision, slow to import for data-only tools

    return timm


def suggest_backbones(name: str, n: int = 5) -> list[str]:
    """Registered timm model names closest to ``name`` (for error messages)."""
    names = _timm().list_models()
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:  # a prefix typo ("convnxt") still shares the family stem
        stem = name.split("_")[0][:4]
        close = [m for m in names if m.startswith(stem)][:n]
    return close


def _needs_img_size(name: str) -> bool:
    cfg = _timm().models.get_pretrained_cfg(name)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


class RegionEncoder(nn.Module):
    """A timm ``features_only`` backbone for ``region x region`` inputs of ``in_chans`` bands.

    ``forward(x)`` takes ``(N, in_chans, R, R)`` and returns one ``(N, C_i, R / r_i, R / r_i)``
    NCHW map per stage, ``C_i = channels[i]``, ``r_i = reductions[i]``.

    Build it with :func:`create_region_encoder`.
    """

    def __init__(self, name: str, features: nn.Module, region: int, in_chans: int) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.region = int(region)
        self.in_chans = int(in_chans)
        self.channels: list[int] = list(features.feature_info.channels())
        self.reductions: list[int] = list(features.feature_info.reduction())
        fmt = getattr(features, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)).upper() == "NHWC"
        self._checkpoint_whole = False

    @property
    def feature_info(self):
        """timm's ``feature_info`` of the wrapped backbone (``channels()``, ``reduction()``)."""
        return self.features.feature_info

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """``(C_i, h_i, w_i)`` of each stage's map for one region."""
        return [(c, self.region // r, self.region // r) for c, r in zip(self.channels, self.reductions)]

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(h, w)`` of the last stage's map: the patch tokens one region hands to the context."""
        _, h, w = self.feature_shapes()[-1]
        return h, w

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing: the backbone's own per-stage version if it has one, else the
        whole forward recomputed in backward (always possible, costs one extra forward)."""
        for owner in (self.features, getattr(self.features, "model", None)):
            if owner is not None and hasattr(owner, "set_grad_checkpointing"):
                owner.set_grad_checkpointing(enable)
                self._checkpoint_whole = False
                return
        self._checkpoint_whole = enable

    def _features(self, x: Tensor) -> list[Tensor]:
        out = self.features(x)
        if self.channels_last:
            out = [o.permute(0, 3, 1, 2) for o in out]
        return list(out)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(N, in_chans, R, R)`` → ``[(N, C_i, R / r_i, R / r_i)]``, NCHW."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != (self.region,) * 2:
            raise ModelConfigError(
                f"region encoder {self.name!r} was built for (N, {self.in_chans}, {self.region}, "
                f"{self.region}) inputs, got {tuple(x.shape)}")
        if self._checkpoint_whole and torch.is_grad_enabled():
            out = checkpoint(self._features, x, use_reentrant=False)
        else:
            out = self._features(x)
        for o, (c, h, w) in zip(out, self.feature_shapes()):
            if tuple(o.shape[1:]) != (c, h, w):
                raise ModelConfigError(
                    f"backbone {self.name!r} gave a {tuple(o.shape[1:])} map for region {self.region}, "
                    f"expected {(c, h, w)} from its feature_info")
        return out

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, region={self.region}, in_chans={self.in_chans}, "
                f"channels={self.channels}, reductions={self.reductions}")


def create_region_encoder(
    name: str,
    *,
    region: int,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    out_indices: Sequence[int] | None = None,
    grad_checkpointing: bool = False,
    **kwargs: Any,
) -> RegionEncoder:
    """Build a :class:`RegionEncoder` from a timm model name, offline.

    Parameters
    ----------
    name : a ``timm.list_models()`` name, e.g. ``"convnext_atto"``, ``"swinv2_tiny_window8_256"``.
    region : the region size ``R`` in pixels; must be a multiple of the backbone's total stride.
    in_chans : input bands (timm adapts the stem; pretrained stems are summed/repeated by timm).
    pretrained : only with ``checkpoint_path`` (a local weights file); a hub download is refused.
    checkpoint_path : local ``.pth``/``.safetensors`` file loaded through timm's pretrained path,
        so timm's own key filters apply (e.g. SwinV2 position tables resized to ``region``).
    out_indices : stages to return (timm's ``out_indices``); default all.
    **kwargs : passed to ``timm.create_model`` (``embed_dim=``, ``depths=``, ``drop_path_rate=``…).

    >>> enc = create_region_encoder("convnext_atto", region=64, in_chans=2)
    >>> [tuple(f.shape) for f in enc(torch.zeros(1, 2, 64, 64))]
    [(1, 40, 16, 16), (1, 80, 8, 8), (1, 160, 4, 4), (1, 320, 2, 2)]
    """
    timm = _timm()
    if not timm.is_model(name):
        raise ModelConfigError(
            f"unknown backbone {name!r}: not a timm model name; close names: {suggest_backbones(name)}")
    if pretrained and checkpoint_path is None:
        raise ModelConfigError(
            f"backbone {name!r}: pretrained=True needs a local checkpoint_path (hub downloads are off)")
    kw: dict[str, Any] = dict(features_only=True, in_chans=in_chans, **kwargs)
    if out_indices is not None:
        kw["out_indices"] = tuple(out_indices)
    if _needs_img_size(name):
        kw.setdefault("img_size", region)
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        if not path.is_file():
            raise ModelConfigError(f"backbone {name!r}: weights file {path} does not exist")
        kw["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        features = timm.create_model(name, pretrained=pretrained, **kw)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ModelConfigError(f"backbone {name!r} could not be built for region {region} with "
                               f"{sorted(kw)}: {e}") from e
    stride = max(features.feature_info.reduction())
    if region % stride:
        ok = [stride * k for k in range(max(1, region // stride), region // stride + 2)]
        raise ModelConfigError(
            f"backbone {name!r} has total stride {stride}: region size {region} is not a multiple "
            f"of it (try {ok})")
    encoder = RegionEncoder(name, features, region, in_chans)
    _probe(encoder)
    if grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    return encoder


def _probe(encoder: RegionEncoder) -> None:
    """One tiny forward so a size the family cannot take (windows, mask units) fails here, named."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, encoder.in_chans, encoder.region, encoder.region))
    except ModelConfigError:
        raise
    except RuntimeError as e:
        raise ModelConfigError(
            f"backbone {encoder.name!r} cannot take {encoder.region}x{encoder.region} regions: {e}") from e
    finally:
        encoder.train(was_training)
