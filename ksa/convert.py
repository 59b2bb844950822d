"""Convert a full-attention causal LM to KSA by self-distillation (the KSA report's conversion recipe).

Teacher: the original model, plain causal attention on the raw tokens, frozen.
Student: the same weights with KSA attention and new summary parameters.

    loss = CE(student) + 5 * KL(student || teacher) + 5 * mean_l min(MSE_l, 0.1)

KL is over the next-token distributions at every text position, KL(p_s || p_t) =
sum_v p_s (log p_s - log p_t), averaged over positions; MSE_l is the mean squared difference of
layer l's attention-block output (after o_proj) on text positions, clamped to [0, 0.1] so a layer
far from the teacher cannot dominate. Stage 1 trains only the summary parameters; stage 2 trains all
parameters. AdamW betas (0.9, 0.95), weight decay 0.01, gradient clip 1.0.

Text comes from a local file or, without one, from a procedural generator of key-value records with
later look-ups (so that information must travel further than the KSA window). A checkpoint (student,
optimizer, step, data RNG) is written every `checkpoint_every` steps; `resume=True` continues from it.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ksa.config import KSAConfig, KSAConfigError
from ksa.layout import text_index
from ksa.modeling import convert_model


@dataclass
class DistillConfig:
    """Self-distillation schedule. steps = summary-only steps + joint steps."""

    steps: int = 200
    joint_steps: int | None = None  # default: steps // 4
    seq_len: int = 512
    batch_size: int = 2
    lr_summary: float = 1e-3
    lr_joint: float = 1e-5
    kl_weight: float = 5.0
    mse_weight: float = 5.0
    mse_clamp: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0

    @property
    def n_joint(self) -> int:
        return self.steps // 4 if self.joint_steps is None else self.joint_steps


# --- text ---------------------------------------------------------------------------------------
_WORDS = (
    "the record of city river market garden north south east west blue green red old new first "
    "second report shows that value number code name key holds stores keeps lists after before"
).split()


def procedural_text(n_chars: int, seed: int = 0) -> str:
    """Paragraphs of 'key K holds value V.' records and filler sentences, with look-ups of keys
    defined much earlier ('recall K: V.'), so predicting V needs long-range attention."""
    rng = random.Random(seed)
    out, keys, size = [], [], 0
    while size < n_chars:
        r = rng.random()
        if r < 0.3:
            k, v = rng.randint(1000, 9999), rng.randint(10, 99)
            keys.append((k, v))
            s = f"key {k} holds value {v}."
        elif r < 0.45 and keys:
            k, v = rng.choice(keys)
            s = f"recall {k}: {v}."
        else:
            s = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 12))) + "."
        out.append(s)
        size += len(s) + 1
    return " ".join(out)


def token_stream(tokenizer, text_file: str | Path | None, min_tokens: int, seed: int) -> torch.Tensor:
    """All tokens of the text file (or of procedural text) as one LongTensor, at least min_tokens long."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise KSAConfigError(f"text file {path} not found; pass an existing --text file or omit it")
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        text = procedural_text(max(min_tokens * 6, 10_000), seed)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < min_tokens:
        if text_file is not None and ids.numel() == 0:
            raise KSAConfigError(f"text file {text_file} has no tokens")
        ids = ids.repeat(min_tokens // max(1, ids.numel()) + 1)
    return ids


def sample_batch(stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - seq_len + 1, (batch,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


# --- loss ---------------------------------------------------------------------------------------
def _capture_attention(model) -> tuple[list, list]:
    """Forward hooks storing each layer's attention-block output; returns (outputs, handles)."""
    outs, handles = [], []
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o)))
    return outs, handles


def distill_loss(student, teacher, ids: torch.Tensor, cfg: DistillConfig | None = None) -> tuple[torch.Tensor, dict]:
    """CE + kl_weight * KL(student||teacher) + mse_weight * mean_l clamp(MSE_l, 0, mse_clamp). ids [B, T]."""
    cfg = cfg or DistillConfig()
    T = ids.shape[1]
    with torch.no_grad():
        t_attn, handles = _capture_attention(teacher)
        try:
            t_logits = teacher(ids).logits.float()
        finally:
            for h in handles:
                h.remove()
    s_attn, handles = _capture_attention(student)
    try:
        out = student(ids, labels=ids)
    finally:
        for h in handles:
            h.remove()
    s_logp = F.log_softmax(out.logits.float(), -1)
    t_logp = F.log_softmax(t_logits, -1)
    kl = (s_logp.exp() * (s_logp - t_logp)).sum(-1).mean()
    ti = text_index(T, student.config.ksa_chunk, student.config.ksa_summaries).to(ids.device)
    mses = [F.mse_loss(s.index_select(1, ti).float(), t.float()) for s, t in zip(s_attn, t_attn, strict=True)]
    mse = torch.stack([m.clamp(0, cfg.mse_clamp) for m in mses]).mean()
    loss = out.loss + cfg.kl_weight * kl + cfg.mse_weight * mse
    return loss, {"loss": loss.item(), "ce": out.loss.item(), "kl": kl.item(), "mse": mse.item()}


# --- training -----------------------------------------------------------------------------------
def summary_parameters(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "summary_" in n]


def _optimizer(model, stage: str, cfg: DistillConfig) -> torch.optim.Optimizer:
    for p in model.parameters():
        p.requires_grad_(stage == "joint")
    params = list(model.parameters()) if stage == "joint" else summary_parameters(model)
    for p in params:
        p.requires_grad_(True)
    lr = cfg.lr_joint if stage == "joint" else cfg.lr_summary
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)


def _load(path, dtype, device, tokenizer: bool = True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise KSAConfigError(f"{path} is not a model folder (no config.json); pass a local Hugging Face model directory")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, (AutoTokenizer.from_pretrained(path) if tokenizer else None)


def self_distill(
    model_dir: str | Path,
    out_dir: str | Path,
    ksa: KSAConfig | None = None,
    cfg: DistillConfig | None = None,
    text_file: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
):
    """Convert the model in `model_dir` to KSA and distill it; saves model + tokenizer in out_dir.

    Returns (student, history) where history is the list of per-step loss dicts.
    """
    ksa, cfg = ksa or KSAConfig(), cfg or DistillConfig()
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    teacher, tokenizer = _load(model_dir, dtype, device)
    teacher.eval().requires_grad_(False)
    state = {"step": 0, "history": []}
    if resume and (ckpt / "state.pt").is_file():
        student, _ = _load(ckpt, dtype, device, tokenizer=False)
        state = torch.load(ckpt / "state.pt", weights_only=True)
    elif resume:
        raise KSAConfigError(f"nothing to resume in {ckpt}; run without --resume first")
    else:
        student = convert_model(copy.deepcopy(teacher), ksa)
    student.train()
    stream = token_stream(tokenizer, text_file, cfg.seq_len * cfg.batch_size * 4, cfg.seed).to(device)
    if stream.numel() < cfg.seq_len:
        raise KSAConfigError(f"text has {stream.numel()} tokens, fewer than --seq-len {cfg.seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    if "rng" in state:
        gen.set_state(state["rng"])
    n_summary = cfg.steps - cfg.n_joint
    stage = "summary" if state["step"] < n_summary else "joint"
    opt = _optimizer(student, stage, cfg)
    if "optimizer" in state and state.get("stage") == stage:
        opt.load_state_dict(state["optimizer"])

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc="ksa distill")
    for step in range(state["step"], cfg.steps):
        if step == n_summary and stage == "summary":
            stage, opt = "joint", _optimizer(student, "joint", cfg)
        ids = sample_batch(stream, cfg.batch_size, cfg.seq_len, gen)
        loss, parts = distill_loss(student, teacher, ids, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.clip)
        opt.step()
        state["history"].append({"step": step + 1, "stage": stage, **parts})
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{parts['loss']:.3f}", kl=f"{parts['kl']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _checkpoint(student, opt, stage, step + 1, gen, state["history"], ckpt)
    bar.close()
    student.eval()
    student.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "distill_history.json").write_text(json.dumps({"config": asdict(cfg), "history": state["history"]}))
    return student, state["history"]


def _checkpoint(student, opt, stage, step, gen, history, ckpt: Path) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(tmp)
    torch.save({"step": step, "stage": stage, "optimizer": opt.state_dict(), "rng": gen.get_state(), "history": history},
               tmp / "state.pt")
    old = ckpt.with_name(ckpt.name + ".old")
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)  # a crash mid-write leaves the previous checkpoint intact
    shutil.rmtree(old, ignore_errors=True)
