"""Training on CPU: two gloo processes equal one; the sharded rows' backward equals autograd of a local
table; a checkpoint goes through `load --from` (both forms) and the service bit-exact."""
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from core import checkpoint_format
from core.corpus import PACKAGED_SAMPLE
from memory_service.loader import LoadConfig, run_load
from model_client import MemoryClient
from model_client.engram import Engram
from training import checkpoint_writer
from training.table_rows import TableRows
from training.trainer import Trainer

from ..served import Server, free_port
from ..trained import STEPS, tiny_cfg, windows

def run_steps(cfg, tokenizer):
    trainer = Trainer(cfg, windows(cfg, tokenizer))
    losses = [trainer.train_step() for _ in range(STEPS)]
    return trainer, losses


def _rank(rank, cfg, port, tokenizer, out):
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        trainer, losses = run_steps(cfg, tokenizer)
        torch.save({"losses": losses, "tables": {L: t.weight for L, t in trainer.tables.items()},
                    "start": {L: t.start for L, t in trainer.tables.items()},
                    "head": trainer.model.head.weight.detach()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_as_one(tmp_path, ds_tokenizer):
    """The same global batch, the table split over two processes that exchange rows and gradients
    all-to-all: losses, every table row and the dense weights equal one process's within float32
    rounding of the different summation order: 2e-5 relative on the loss, 2e-6 on dense weights, 1e-5
    on rows (0.2% of one Adam step of the tables at lr 5e-3: Adam divides by sqrt(v), which magnifies
    the rounding of a row read rarely)."""
    torch.set_num_threads(1)
    one, losses = run_steps(tiny_cfg(tmp_path), ds_tokenizer)
    assert losses[-1] < losses[0]  # it learns
    mp.spawn(_rank, args=(tiny_cfg(tmp_path, world=2), free_port(), ds_tokenizer, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for a, b in zip(losses, ranks[0]["losses"]):
        assert math.isclose(a, b, rel_tol=2e-5), (losses, ranks[0]["losses"])
    for layer, table in one.tables.items():
        shards = torch.cat([ranks[r]["tables"][layer] for r in range(2)])
        assert ranks[1]["start"][layer] > 0  # really split
        torch.testing.assert_close(shards, table.weight, rtol=0, atol=1e-5)
        assert not torch.equal(table.weight, Trainer(tiny_cfg(tmp_path), one.windows).tables[layer].weight)  # moved
    torch.testing.assert_close(ranks[1]["head"], one.model.head.weight.detach(), rtol=0, atol=2e-6)


class DifferentiableTable(nn.Module):
    """The reference: the whole table an nn.Parameter, rows by F.embedding, gradients by autograd."""

    def __init__(self, weight, row_format):
        super().__init__()
        self.weight, self.row_format, self.num_rows = nn.Parameter(weight.clone()), row_format, weight.shape[0]

    def lookup(self, row_ids, dtype):
        return F.embedding(row_ids, self.weight).to(dtype)


def test_sharded_rows_backward_equals_autograd_of_a_local_table(tmp_path, ds_tokenizer):
    trainer = Trainer(tiny_cfg(tmp_path), windows(tiny_cfg(tmp_path), ds_tokenizer))
    layer = 1
    engram = trainer.model.blocks[layer].engram
    table = trainer.tables[layer]
    reference = Engram(engram.config, layer, DifferentiableTable(table.weight, engram.multi_head_embedding.embedding.row_format))
    reference.load_state_dict(engram.state_dict(), strict=False)  # all but the table, given above
    batch = trainer.windows.train_batch(0, 2)
    rows = TableRows({layer: table}, trainer.hasher, batch)
    hidden = torch.randn(2, batch.shape[1], 1, 32, requires_grad=True)
    probe = torch.randn(2, batch.shape[1], 1, 32)
    (engram(hidden, rows.hash_ids[layer], step=rows) * probe).sum().backward()
    leaf, _ = rows.rows[layer]
    ours = torch.zeros_like(table.weight).index_add_(0, table._pending[0], leaf.grad)
    hidden_ours = hidden.grad.clone()
    hidden.grad = None
    (reference(hidden, rows.hash_ids[layer]) * probe).sum().backward()
    torch.testing.assert_close(ours, reference.multi_head_embedding.embedding.weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hidden_ours, hidden.grad, rtol=1e-5, atol=1e-7)
    theirs = dict(reference.named_parameters())
    for name, p in engram.named_parameters():
        q = theirs[name]
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert int((ours.abs().sum(1) > 0).sum()) > 10


def test_checkpoint_round_trip_through_load_and_the_service(tmp_path, ds_tokenizer):
    cfg = tiny_cfg(tmp_path, steps=1)
    trainer = Trainer(cfg, windows(cfg, ds_tokenizer))
    trainer.train_step()
    index = trainer.save()
    merged = checkpoint_writer.merge(index, tmp_path / "merged.safetensors")
    assert checkpoint_format.metadata(merged)["engram_config"] == trainer.model.engram_config.to_json()
    for source, db in ((index, tmp_path / "db_index"), (merged, tmp_path / "db_merged")):
        assert run_load(LoadConfig(db=str(db), checkpoint=str(source), progress=False)) == 0  # config from it
    server = Server(tmp_path / "db_index", workers=1)
    try:
        server.wait_serving()
        with MemoryClient(server.target) as client:
            for layer, table in trainer.tables.items():
                ids = np.arange(table.num_rows)
                served = client.lookup_values(f"layer{layer}", ids)
                np.testing.assert_array_equal(served, table.weight.numpy())  # float32 rows, bit for bit
    finally:
        assert server.stop() == 0


def test_a_checkpoint_that_disagrees_is_refused_naming_the_tensor(tmp_path, ds_tokenizer):
    cfg = tiny_cfg(tmp_path, steps=1)
    trainer = Trainer(cfg, windows(cfg, ds_tokenizer))
    index = trainer.save()
    with pytest.raises(ValueError, match="differs from the config checkpoint"):
        run_load(LoadConfig(db=str(tmp_path / "db"), checkpoint=str(index), config="demo", progress=False))
    body = json.loads(index.read_text())
    name = checkpoint_format.TABLE_TENSOR.format(L=1)
    body["row_shards"][name][0]["stop"] -= 1  # the index claims fewer rows than the shard holds
    index.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        run_load(LoadConfig(db=str(tmp_path / "db2"), checkpoint=str(index), progress=False))


def test_a_trained_checkpoint_loads_for_inference_with_the_same_outputs(tmp_path, ds_tokenizer):
    """load_trained: the served model (KV cache, local tables decoded from the checkpoint) gives the
    logits training computed (whole-sequence forward, rows from the sharded tables)."""
    from model_client.trained_model import load_trained
    cfg = tiny_cfg(tmp_path, steps=1)
    trainer = Trainer(cfg, windows(cfg, ds_tokenizer))
    trainer.train_step()
    index = trainer.save()
    model = load_trained(index)
    batch = trainer.windows.train_batch(5, 2)
    with torch.no_grad():
        rows = TableRows(trainer.tables, trainer.hasher, batch)
        trained = trainer.model.forward_train(torch.from_numpy(batch), rows, rows.hash_ids)[:, -1]
        T = batch.shape[1]
        hashed = {L: torch.from_numpy(v) for L, v in trainer.hasher.hash(batch).items()}
        served = model(torch.from_numpy(batch), torch.arange(T)[None].expand(2, T), model.new_state(2), hashed)
    torch.testing.assert_close(served, trained, rtol=1e-4, atol=1e-4)
    body = json.loads(index.read_text())
    body["weight_map"]["backbone.extra.weight"] = body["weight_map"]["backbone.head.weight"]
    index.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="backbone.extra.weight"):
        load_trained(index)


def test_gate_command_draws_and_compares(tmp_path, ds_tokenizer):
    """`engram-memory gate` on a trained checkpoint: a PNG per text, an HTML page with every token, and
    the phrase figure's means, each a gate in (0, 1)."""
    from training.gate_map import GateConfig
    from training.gate_map import run as run_gate
    cfg = tiny_cfg(tmp_path, steps=1)
    trainer = Trainer(cfg, windows(cfg, ds_tokenizer))
    index = trainer.save()
    out = tmp_path / "gate"
    run_gate(GateConfig(checkpoint=str(index), text=["Alice was beginning to get very tired", "中华人民共和国"],
                        out=str(out), corpora=[str(PACKAGED_SAMPLE)], windows=4, min_count=3, doc_lines=20))
    assert (out / "gate_0.png").stat().st_size > 1000 and (out / "gate_1.png").is_file()
    page = (out / "gate.html").read_text(encoding="utf-8")
    assert "tired" in page and page.count("<span") >= 2 * 7
    stats = json.loads((out / "gate_phrases.json").read_text())
    assert stats["phrase_tokens"] > 0 and set(stats["layers"]) == {"1", "2"}
    assert all(0 < v[k] < 1 for v in stats["layers"].values() for k in ("phrase", "other"))


def test_more_nccl_processes_than_gpus_is_refused_naming_the_flag():
    """NCCL refuses two ranks on one GPU ('Duplicate GPU detected') only after the group starts;
    train says so before, in the flag's terms."""
    from training.trainer import _check_gpus
    gpus = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"--world-size: {gpus + 1} processes on this host need {gpus + 1} GPUs, "
                                         rf"it has {gpus} .*--device cpu trains over gloo"):
        _check_gpus(gpus + 1)
    _check_gpus(gpus)  # as many as there are: fine
