"""The recipe schema: one typed, self-documenting config for a training run.

A recipe is a YAML file validated by these pydantic models. Command-line overrides use dotted keys
(`rollout.group_size=8`); unknown keys are errors that name the nearest valid key; `golong train
--dry-run` prints the resolved recipe. Every field documents itself (`description=`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# A response passes when its reward is above this: training's pass_rate and evaluation's pass@1.
PASS_THRESHOLD = 0.5


class RecipeError(ValueError):
    """A recipe or override the user must fix; the message is one line and names the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="peft target_modules.")


class ModelConfig(_Section):
    path: str = Field(..., description="Local model folder or hub id of a transformers causal LM (or a built-in name such as 'smollm2-135m').")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Parameter and compute dtype of the learner.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint. Off unless you trust it.")
    lora: LoraConfig | None = Field(None, description="Train a LoRA adapter instead of all weights.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (saves memory at long lengths).")
    checkpoint_policy: Literal["full", "save_attention"] = Field("save_attention", description="With gradient_checkpointing: 'full' recomputes each layer in backward; 'save_attention' keeps the attention outputs (O(T) memory per layer) and recomputes the rest, skipping the O(T^2) attention recompute; for shared-prompt FlexAttention on CUDA it keeps q, k, v and the output (golong.checkpointing; at 1.7B / 32K on an H100: learner 0.85x the time, peak memory 63.6 instead of 48.0 GiB).")
    checkpoint_layers: int | None = Field(None, ge=0, description="With gradient_checkpointing: checkpoint only the first N decoder layers (the rest keep their activations: faster where memory allows); None = all layers.")
    attn_implementation: str | None = Field(None, description="transformers attention backend (e.g. 'sdpa'); None = library default.")
    compile: bool = Field(False, description="Learner: compile each decoder layer with torch.compile (fuses the norms, RoPE, SwiGLU and residual adds; bench/learner.py measured 1.26x tokens/s at 32K on an H200). The first steps pay the compile; rollouts on a shared model run eagerly. KSA policies too (their Triton kernels are opaque custom ops inside the compiled layers).")
    ksa: dict[str, Any] | None = Field(None, description="Make the policy a Kwai Summary Attention model with these ksa settings.")


class DataSourceConfig(_Section):
    path: str | None = Field(None, description="A dataset in the GoLongRL schema: local .parquet/.jsonl file or folder, or a hub id.")
    generate: str | list[str] | None = Field(None, description="Generate rows offline for these task names ('all' = every built-in task).")
    task_file: str | None = Field(None, description="A user task plug-in 'path/to/file.py:ClassName' to generate from.")
    length: int | str = Field("1k", description="Target prompt length for generated rows (e.g. 2k, 32k, 131072).")
    n: int = Field(256, ge=1, description="Number of rows to generate for this source.")
    split: Literal["train", "heldout"] = Field("train", description="Generator split (heldout problems are disjoint from train).")
    knobs: dict[str, Any] = Field(default_factory=dict, description="Difficulty knobs passed to the generators.")
    weight: float = Field(1.0, gt=0, description="Sampling weight of this source in the mixture.")


class DataConfig(_Section):
    sources: list[DataSourceConfig] = Field(..., min_length=1, description="The training mixture.")
    max_prompt_tokens: int = Field(4096, ge=1, description="Prompts longer than this are left-truncated (GoLongRL: 163840).")
    skip_invalid: bool = Field(False, description="Skip and count malformed rows instead of failing on the first one.")
    seed: int = Field(0, description="Seed of the mixture's sampling order.")


class RolloutConfig(_Section):
    engine: Literal["auto", "static", "loop", "vllm", "hf", "fast", "plain"] = Field("static", description="Rollout engine (golong/rollout/__init__.py): 'static' = golong's engine over the transformers model (static K/V incl. KSA ring + summaries, CUDA graphs, continuous batching; models it cannot run go to loop), 'loop' = a decode loop over the model's own forward and cache (any model), 'vllm', or 'auto' (vLLM where installed with a GPU and the policy is not KSA, else static). Older names still work: hf, fast = static; plain = loop (`--dry-run` says which engine a name builds).")
    group_size: int = Field(8, ge=1, description="G: responses sampled per prompt.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts whose groups make one training batch.")
    max_new_tokens: int = Field(256, ge=1, description="Response length limit (GoLongRL: 16384).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    batch_size: int = Field(32, ge=1, description="Sequences generated at once by the static / loop engines.")
    kv_budget_gb: float | None = Field(None, gt=0, description="static / loop engines: decode K/V memory budget (GiB); as many sequences run at once as their K/V fits (KSA ring layers need less, so more run at once). None = off (batch_size alone).")
    share_prefix: bool = Field(True, description="static engine: the G responses of a prompt decode against one stored copy of its K/V, read once per step for the group (cascade attention, golong/rollout/prefix.py): ~G x less K/V read and stored at long prompts. False = each row keeps its own copy of the prompt (the older layout). KSA policies share too (ksa/static_shared.py: the prompt's visible text and whole-chunk summaries once per group).")
    compile_decode: bool = Field(False, description="static engine: run each decode layer (full attention or KSA) through one torch.compile'd (inductor) function so its norms / RoPE / residual / SiLU*mul / attention softmax fuse, then capture that in the CUDA graph; costs a compile per step shape (bucket) on first use.")
    fuse_projections: bool = Field(False, description="static engine with compile_decode: the decode layers read q/k/v and gate/up stacked into one weight each (copies refreshed from the model at every generate, ~0.7x the decoder weights' memory more), so a step runs 4 GEMMs a layer instead of 7, each with more output columns (bench/decode_gemm.py times the two).")
    ksa_summaries_every_step: bool = Field(False, description="static engine, KSA policies: feed the chunk's summary slots as extra query columns in every decode step, not only in steps where some row completes a chunk (a row that completes none discards its summary columns, as rows already do in such steps). Every step then has one shape: half the compiled decode-layer variants and CUDA graphs (a KSA first step at 1.7B / 32K spent 201 s compiling its decode on a fresh machine, H100 2026-12-06), for wider GEMMs and attention in the steps without a chunk end (bench/run_h200.sh sumcols times both).")
    look_ahead: bool = Field(True, description="static engine: enqueue each decode step before reading the previous step's tokens (its token inputs fed from the device), so the GPU decodes while the host reads tokens and schedules; the same tokens as reading each step first (tests/test_rollout_look_ahead.py). Off only for comparison.")
    decode_kernel: Literal["torch", "triton"] = Field("torch", description="static engine: decode attention as matmul, softmax, matmul ('torch'; under compile_decode inductor fuses what it can) or one split-K Triton kernel per key part ('triton', ksa/triton_decode.py: K/V read once, scores kept on chip, parts merged by log-sum-exp) for full attention, shared prompts and KSA layers alike. 'triton' needs CUDA (on a CPU it runs in Triton's interpreter: tests only).")

    @model_validator(mode="after")
    def _check(self) -> RolloutConfig:
        if self.fuse_projections and not self.compile_decode:
            raise ValueError("rollout.fuse_projections needs rollout.compile_decode=true (only the compiled decode "
                             "layers read the stacked weights)")
        return self


class RewardConfig(_Section):
    workers: int = Field(2, ge=1, description="Parallel reward workers (processes or Ray tasks).")
    timeout_s: float = Field(10.0, gt=0, description="Per-response scoring time limit; a timeout scores 0 and is counted.")
    variant: dict[str, Any] = Field(default_factory=dict, description="Opt-in reward variants (faithful GoLongRL scoring by default).")


class AlgoConfig(_Section):
    estimator: str = Field("tmn_reweight", description="Advantage estimator: tmn_reweight, tmn, grpo, dr_grpo, rloo, task_std.")
    estimator_params: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters (tmn_reweight: alpha=0.8, gamma=1.0, eps=1e-6).")
    clip_low: float = Field(0.2, ge=0, description="PPO clip range below 1 (ratio >= 1 - clip_low).")
    clip_high: float = Field(0.28, ge=0, description="PPO clip range above 1 (clip-higher: ratio <= 1 + clip_high).")
    dual_clip: float | None = Field(3.0, description="Dual-clip constant c > 1 bounding the loss of negative advantages; None = off.")
    policy_loss: str = Field("ppo_clip", description="Policy loss, by its registered name (golong.algos.register_policy_loss): ppo_clip = PPO clip-higher with token-level clip_low / clip_high and the optional dual_clip.")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field("token-mean", description="How token losses are averaged: over all tokens; per sequence then over sequences; or (Dr.GRPO) each sequence's sum divided by the constant loss_norm_tokens, then over sequences. Default for estimator dr_grpo: seq-mean-token-sum-norm.")
    loss_norm_tokens: int | None = Field(None, ge=1, description="The constant length of loss_agg seq-mean-token-sum-norm; None = rollout.max_new_tokens.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference policy in the loss (0 = no reference model).")
    kl_type: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator.")
    updates_per_batch: int = Field(1, ge=1, description="Passes over each batch (PPO epochs). 1 = on-policy; more: old log-probs are taken once, before the first update, and every pass runs mini_batches optimizer steps.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per pass: each pass splits the batch into this many consecutive mini-batches (1 = one step on the whole batch). With more than one step per batch, old log-probs are fixed before the first.")
    rollout_is: Literal["off", "token", "sequence"] = Field("off", description="Rollout importance-sampling correction of the sampler/learner mismatch: each token's policy-gradient term is weighted by pi_old / pi_sampler of the token ('token') or of the whole response ('sequence'), bounded by rollout_is_mode. Needs the sampler's log-probs (every golong engine returns them). GoLongRL: token.")
    rollout_is_clip: tuple[float, float] = Field((0.5, 5.0), description="The band [low, high] of the importance weights (GoLongRL: [0.5, 5.0]).")
    rollout_is_mode: Literal["clip", "truncate"] = Field("clip", description="'clip': a token whose weight is outside rollout_is_clip gets weight 0 (its gradient dropped, the loss's denominator unchanged; GoLongRL); 'truncate': weights capped at the band's high end (TIS).")
    rollout_is_veto: float | None = Field(None, gt=0, lt=1, description="A response with any token whose ratio pi_old / pi_sampler is below this gets weight 0 (GoLongRL: 1e-4); None = no veto.")
    dynamic_sampling: bool = Field(True, description="Drop groups whose rewards all equal; generate further rounds until prompts_per_step groups are kept.")
    prompts_per_round: int | None = Field(None, ge=1, description="Prompts generated per dynamic-sampling round (GoLongRL: 512 for 128 kept); None = rollout.prompts_per_step.")
    max_generation_rounds: int = Field(3, ge=1, description="Generation rounds per step at most (GoLongRL: 32). When more than prompts_per_step groups are kept, the first ones in generation order train.")
    underfilled: Literal["train", "error"] = Field("train", description="After max_generation_rounds with fewer than prompts_per_step groups kept: 'train' on those kept (metric groups_kept says how many), or 'error' = stop the run (GoLongRL).")

    @model_validator(mode="after")
    def _check(self) -> AlgoConfig:
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"algo.dual_clip must be > 1 (got {self.dual_clip}); set null to turn dual clip off")
        low, high = self.rollout_is_clip
        if not 0 < low <= 1 <= high:
            raise ValueError(f"algo.rollout_is_clip must be [low, high] with 0 < low <= 1 <= high (got {list(self.rollout_is_clip)})")
        if self.estimator == "dr_grpo" and "loss_agg" not in self.model_fields_set:
            self.__dict__["loss_agg"] = "seq-mean-token-sum-norm"  # Dr.GRPO's constant-length aggregation
        return self


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then constant.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    micro_batch_tokens: int = Field(8192, ge=1, description="Token budget of one packed micro-batch.")
    logprob_chunk: int = Field(1024, ge=1, description="Tokens per chunk when computing log-probs (full-vocab logits never held for a whole sequence).")
    share_prompts: bool = Field(True, description="Pack the responses of one prompt behind a single copy of it (each attends to the prompt and itself): the prompt's forward and backward run once per group instead of G times, same log-probs and gradients. KSA policies share on the KSA layout (ksa/shared.py); models with sliding-window or linear-attention layers use plain packing.")
    shared_prompt_kernel: Literal["flex", "sdpa", "auto"] = Field("flex", description="CUDA attention of shared-prompt rows (full-attention policies). 'flex': one FlexAttention over the row's block mask, compiled once per bucket length, kept through save_attention's recompute with its saved tensors (q, k, v, output; golong.checkpointing). 'sdpa': per unit, the prompt (causal), all its responses over the prompt, and each response over itself (causal), each one fused-attention call (cuDNN's, or flash with cuDNN's SDPA backend off), merged by their log-sum-exp (ksa.pieces); save_attention keeps the calls' outputs. Equal log-probs and gradients (tested on the CPU; on an H100 with cuDNN's length-bucketed plans, which golong turns on at import). 'auto': per row, 'sdpa' where its responses average at least 1,024 tokens, else 'flex' (golong.packing.shared_kernel: the pieces make one kernel call per response each way; on an H100 they won with 2K-token responses and lost with 256-token ones). The GPU recipes take 'auto'. KSA policies use their own layout either way.")
    flex_autotune: bool = Field(False, description="Compile the shared-prompt FlexAttention with inductor's max-autotune (forward and backward tile configurations timed once per bucket length, the fastest kept): a slower first step, possibly a faster learner. CUDA only; off: inductor's default tiles.")
    fp32_master_weights: bool = Field(True, description="With model.dtype=bfloat16: keep float32 weights and optimizer state, compute under bf16 autocast (RL-sized updates vanish in bf16 weights). False = pure bf16 weights (half the memory).")
    master_weights: Literal["model", "optimizer"] = Field("model", description="With fp32_master_weights: where the float32 weights live. 'model': a float32 model run under bf16 autocast. 'optimizer': a bf16 model (bf16 activations, no per-forward weight casts) whose float32 copies the optimizer updates and copies back after each step.")


class ClusterConfig(_Section):
    mode: Literal["ray", "inline"] = Field("ray", description="Ray actors (a local cluster is started if none is given) or one process.")
    address: str | None = Field(None, description="Ray cluster address ('auto' or host:port); None starts a local cluster.")
    num_cpus: int | None = Field(None, description="Logical CPUs of a local Ray cluster (None = learner_cpus + rollout_cpus + reward.workers).")
    learner_gpus: int = Field(0, ge=0, description="GPUs for the learner (0 = CPU). More than 1: one learner rank (Ray actor) per GPU, the model sharded over them with FSDP2.")
    learner_procs: int = Field(1, ge=1, description="Learner ranks on CPU when learner_gpus = 0 (gloo; mainly for tests). Ignored with GPUs.")
    rollout_gpus: int = Field(0, ge=0, le=1, description="GPUs for the rollout engine when not colocated.")
    colocate: bool = Field(True, description="Rollout shares the learner's GPUs (sleeps during updates).")
    learner_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved for the learner actor.")
    rollout_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved for the rollout actor.")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per role (None = all cores: learner and rollout take turns).")
    share_weights: bool = Field(True, description="Inline mode: the engine samples from the learner's own model object (no copy, no sync); false = a separate copy synced after each update.")


class TrainerConfig(_Section):
    steps: int = Field(100, ge=1, description="Training steps.")
    seed: int = Field(0, description="Global seed (torch, sampling, data order).")
    output_dir: str = Field("runs/run", description="Where metrics, checkpoints and plots go.")
    save_every: int = Field(10, ge=1, description="Checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard.")
    wandb: str | None = Field(None, description="W&B project name to log to (None = off).")
    warm_start_steps: int = Field(0, ge=0, description="Supervised steps on reference answers (rewards.oracle_response, with a one-line think block) before RL; teaches a small non-thinking model the answer format. 0 = off.")
    warm_start_prompts: int = Field(8, ge=1, description="Prompts per warm-start step.")


class EvalSettings(_Section):
    """One evaluation: which problems, how responses are drawn, how they are scored.

    The one eval settings type: the recipe's `eval:` section is it (`every` > 0 evaluates the policy
    during training), `golong eval` builds it from its options, `golong.evaluate` runs on it. The
    drawing and scoring fields (RESUME_FIELDS) are saved with an evaluation (OUT/eval_settings.json),
    and a resumed evaluation must use the same. A None "in training" takes the recipe's own value.
    """

    every: int = Field(0, ge=0, description="Training: evaluate the policy on held-out problems every N steps and at the end (0 = off).")
    # the problems
    data: list[str] = Field(default_factory=list, validation_alias=AliasChoices("data", "path"), description="Evaluate on these datasets (files, folders or hub ids; 'path' is accepted too).")
    split: str = Field("train", description="Split to load when a dataset is a hub id.")
    synth: bool | None = Field(None, description="Also generate held-out problems (split 'heldout', disjoint from training); None = only when no data is given.")
    tasks: str | list[str] = Field("all", description="Tasks to evaluate ('all' = every registered task); filters data and generated problems.")
    lengths: list[int | str] = Field(default_factory=lambda: ["1k"], description="Prompt lengths of the generated problems.")
    n: int = Field(8, ge=1, description="Generated problems per task and length.")
    train_data: str | None = Field(None, description="Training data: evaluation rows whose prompt is in it are reported and excluded.")
    keep_overlap: bool = Field(False, description="Keep the rows that overlap train_data (still reported).")
    # drawing and scoring responses (RESUME_FIELDS)
    k: int = Field(1, ge=1, description="Samples per problem (pass@1 is averaged over them; pass@k also reported).")
    max_new_tokens: int | None = Field(None, ge=1, description="Response limit (None = rollout.max_new_tokens in training, 512 otherwise).")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature (0 = greedy; k > 1 needs > 0).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling threshold (None = rollout.top_p in training, 1.0 otherwise).")
    seed: int = Field(0, description="Seed of the generated problems and of sampling.")
    batch_prompts: int = Field(8, ge=1, description="Problems per generation call (and per flush of responses.jsonl).")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Left-truncate longer prompts (None = data.max_prompt_tokens in training, never otherwise).")
    pass_threshold: float = Field(PASS_THRESHOLD, description="A sample passes when reward > this (binary rewards: == 1).")
    variant: dict[str, Any] = Field(default_factory=dict, description="Opt-in reward variants for scoring (faithful GoLongRL scoring by default).")

    @field_validator("data", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [] if v is None else [v] if isinstance(v, str) else v

    def task_names(self) -> list[str] | None:
        """The tasks asked for; None = every task."""
        names = [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)
        return None if names == ["all"] else names

    def resume_key(self) -> dict[str, Any]:
        """The fields a resumed evaluation must share with the one it continues."""
        return {name: self.model_dump()[name] for name in RESUME_FIELDS}


# What must not change between an evaluation and its resumption (and what results.json records).
RESUME_FIELDS = ("k", "max_new_tokens", "temperature", "top_p", "seed", "batch_prompts", "max_prompt_tokens",
                 "pass_threshold", "variant")


class Recipe(_Section):
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @model_validator(mode="after")
    def _resolve_algo(self) -> Recipe:
        if self.algo.loss_norm_tokens is None:
            self.algo.__dict__["loss_norm_tokens"] = self.rollout.max_new_tokens
        return self


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `a.b.c=value` overrides (values parsed as YAML), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path} must hold a mapping of sections (model:, data:, ...)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    return validate_recipe(raw)


def validate_recipe(raw: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_explain(e)) from None


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"override {key!r}: {part!r} is not a section")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {key!r}: cannot set {last!r} here")


def _explain(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        hint = _nearest_key(first["loc"])
        return f"unknown recipe key {loc!r}" + (f"; did you mean {hint!r}?" if hint else "")
    if first["type"] == "missing":
        return f"recipe key {loc!r} is required"
    if first["type"] == "value_error":  # a validator's own one-line message
        return str(first["msg"]).removeprefix("Value error, ")
    return f"recipe key {loc!r}: {first['msg']} (got {first.get('input')!r})"


def _nearest_key(loc: tuple) -> str | None:
    """The closest valid dotted key to an unknown one, walking the schema along `loc`."""
    model: type[BaseModel] | None = Recipe
    prefix: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):
            prefix.append(str(part))
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        prefix.append(part)
        model = _section_type(field.annotation)
    if model is None:
        return None
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return ".".join([*prefix, match[0]]) if match else None


def _section_type(annotation: Any) -> type[BaseModel] | None:
    args = [annotation, *getattr(annotation, "__args__", ())]
    for a in args:
        for b in [a, *getattr(a, "__args__", ())]:
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None
