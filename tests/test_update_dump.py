"""output.dump_updates streams one file per round as the run goes (loopback grid, real ClientApp, no Ray)."""

import json

import numpy as np
from flwr.app import Context, RecordDict

from benchmarks.codec_bench import load_updates
from clients.client_app import app as client_app
from fedcomp.run.config import resolve
from strategies.loopback import LoopbackGrid
from strategies.server_app import UpdateDump, build_strategy, serve


def test_updates_are_written_round_by_round_atomically_and_read_back(task_identity, tmp_path):
    config = resolve({"num_clients": 4, "rounds": 3, "fraction": 0.5, "up.scheme": "topk-uniform-ans",
                      "up.fraction": 0.02, "down.scheme": "topk-uniform-ans", "down.fraction": 0.03,
                      "output.dump_updates": True, "output.dir": str(tmp_path)})
    folder = tmp_path / "updates"
    dump = UpdateDump(folder)
    seen: dict[int, dict[int, dict[str, np.ndarray]]] = {}

    def sink(server_round, updates):
        # streaming: the earlier rounds are on disk already, this one is not yet, and no temporary is left
        assert sorted(p.name for p in folder.glob("*")) == [f"r{r:04d}.npz" for r in range(1, server_round)]
        seen[server_round] = {p: {k: v.copy() for k, v in u.items()} for p, u in updates.items()}
        dump(server_round, updates)

    grid = LoopbackGrid(client_app, {40 + i: i for i in range(4)}, config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    serve(grid, context, lambda cfg, model: build_strategy(cfg, model, sink))
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in folder.glob("*")) == ["r0001.npz", "r0002.npz", "r0003.npz"]
    for server_round, updates in seen.items():
        assert len(updates) == rows[server_round - 1]["clients_usable"] == 2
        with np.load(folder / f"r{server_round:04d}.npz", allow_pickle=False) as data:
            assert sorted(data.files) == sorted(f"c{p}/{k}" for p, u in updates.items() for k in u)
            for p, update in updates.items():
                assert all(np.array_equal(data[f"c{p}/{k}"], v) for k, v in update.items())
    corpus = load_updates(folder)  # what benchmarks/codec_bench.py --updates reads
    assert len(corpus) == 6
    first = seen[1][min(seen[1])]
    assert corpus[0].keys() == first.keys() and all(np.array_equal(corpus[0][k], first[k]) for k in first)
