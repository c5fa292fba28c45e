"""TrainConfig: what `engram-memory train` is told; one flag per field (core.flags).

Defaults are a model that trains in minutes on one H200 and in a few steps on a CPU: an 8-block
backbone of width 512 (8 heads, MLP 4x, 26M parameters besides the 129,280 x 512 embedding and
head) with Engram at blocks 1 and 5 (the reference's 2- and 3-grams, 8 heads of 64 values) over
tables of 16 sub-tables of ~50,000 rows per layer: 2 x 800,000 rows x 64 = 102M table
parameters. Sequences of 512 tokens, 32 a step: 16,384 tokens a step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.config import EngramConfig
from core.flags import part
from model_client.demo_model import BackboneConfig

from .token_windows import DEFAULT_CORPORA

TRAIN_ENGRAM = dict(engram_vocab_size=[50_000, 50_000], layer_ids=[1, 5])


@dataclass
class TrainConfig:
    out: str = field(default="train-out", metadata={
        "help": "directory for the checkpoint (safetensors shards + index), train state and metrics"})
    config: str = field(default="", metadata={
        "help": "EngramConfig preset or JSON file (default: 2 layers at blocks 1 and 5, 2 x 50,000 rows per "
                "sub-table); hidden_size and hc_mult come from the backbone flags"})
    backbone: BackboneConfig = part(lambda: BackboneConfig(num_layers=8, hidden_size=512, hc_mult=1, heads=8,
                                                           max_positions=512))
    engram: bool = field(default=True, metadata={
        "help": "train with the Engram layers; --no-engram trains the same backbone without them (the baseline)"})
    corpora: list[str] = field(default_factory=lambda: list(DEFAULT_CORPORA), metadata={
        "help": "text files or directories, in the shared corpora or as paths"})
    seq_len: int = field(default=512, metadata={"help": "tokens per training sequence"})
    batch: int = field(default=32, metadata={"help": "sequences per step, over all processes together"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the backbone (AdamW)"})
    table_lr_mult: float = field(default=5.0, metadata={
        "help": "the tables' learning rate over the backbone's (the paper: 5x, Adam, no weight decay)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of the backbone's matrices"})
    warmup: int = field(default=50, metadata={"help": "linear warmup steps, then cosine decay to 10%"})
    eval_every: int = field(default=100, metadata={"help": "validation loss every this many steps (0: at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "validation batches per evaluation"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every this many steps (0: at the end only)"})
    resume: bool = field(default=False, metadata={"help": "continue from the train state in --out"})
    world_size: int = field(default=1, metadata={
        "help": "processes, each owning 1/N of every table's rows (gloo on CPU, NCCL on GPU); under torchrun "
                "its WORLD_SIZE"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when present)"})
    autocast: bool = field(default=True, metadata={
        "help": "bf16 autocast on a GPU; --no-autocast computes in float32 with TF32 off (to compare world "
                "sizes to float32 rounding, as the CPU test does)"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, the tables and the data order"})
    doc_lines: int = field(default=100, metadata={
        "help": "lines of a corpus file per document; every 20th document is held out for validation"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (loss, tokens/s)"})
    max_seconds: float = field(default=0.0, metadata={
        "help": "stop after this many seconds of training even before --steps (0: no limit), then evaluate and save"})

    def __post_init__(self):
        for name in ("seq_len", "batch", "steps", "world_size", "eval_batches", "doc_lines"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("eval_every", "save_every", "warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.lr <= 0 or self.table_lr_mult <= 0 or self.weight_decay < 0:
            raise ValueError("--lr and --table-lr-mult must be > 0 and --weight-decay >= 0")
        if self.batch % self.world_size:
            raise ValueError(f"--batch {self.batch} must be divisible by --world-size {self.world_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be cpu, cuda or auto (got {self.device!r})")
        if self.seq_len > self.backbone.max_positions:
            raise ValueError(f"--seq-len {self.seq_len} exceeds --max-positions {self.backbone.max_positions}")
        if not self.corpora:
            raise ValueError("--corpora: name at least one text file")

    def engram_config(self) -> EngramConfig:
        base = EngramConfig.load(self.config) if self.config else EngramConfig(**TRAIN_ENGRAM)
        return base.replace(hidden_size=self.backbone.hidden_size, hc_mult=self.backbone.hc_mult)
