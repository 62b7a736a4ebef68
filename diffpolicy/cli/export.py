"""diffpolicy-export: a checkpoint's chunk function as one ONNX or torch.export artifact.

    diffpolicy-export checkpoint=runs/pusht/unet_flow_h8_... sampler=euler steps=8 format=onnx
    diffpolicy-export checkpoint=... format=torch_export out=deploy/pusht

The artifact maps observations (as the encoder sees them) and the initial noise to the action chunk; see
:mod:`diffpolicy.export.artifact` for its inputs, outputs and ``export.json``. It is checked against eager PyTorch on
random inputs before the command returns, and :meth:`Controller.from_artifact
<diffpolicy.control.Controller.from_artifact>` runs it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ..export import export_checkpoint
from ..policy.checkpoint import resolve_checkpoint


def run(cfg: dict) -> dict:
    ckpt = resolve_checkpoint(cfg["checkpoint"])
    label = "_".join(str(x) for x in (cfg.get("format", "onnx"), cfg.get("sampler") or "default",
                                       cfg.get("steps") or "default"))
    out = Path(cfg["out"]) if cfg.get("out") else ckpt.parent.parent / "export" / label
    print(f"exporting {ckpt} ({cfg.get('format', 'onnx')}) to {out.resolve()}")
    meta = export_checkpoint(ckpt, out, cfg.get("sampler"), cfg.get("steps"), cfg.get("format", "onnx"),
                             shift=cfg.get("shift"), spacing=cfg.get("spacing"), atol=cfg.get("atol", 1e-4))
    print(f"wrote {out.resolve() / meta['file']} and export.json: {meta['policy']}, {meta['sampler']}-{meta['steps']},"
          f" inputs {list(meta['inputs'])} + noise {meta['noise']}; largest difference from eager PyTorch "
          f"{meta['max_abs_diff_vs_eager']:.1e}")
    return meta


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="export", version_base=None)
def _main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
