"""The Ray engine on a simulated two-node cluster (`ray.cluster_utils.Cluster`, both nodes on this
machine): actors on both nodes, and the same output as the local engine row for row."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.cluster_utils import Cluster

from jobbert_onnx.datasets import embed_dataset
from jobbert_onnx.datasets.ray_engine import RayEmbedBatches
from tests import toy_artifact
from tests.dataset_data import embeddings, rows, write

# Run by tests/test_datasets_ray_process.py in a pytest process of its own (see why there).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("JOBBERT_ONNX_RAY_TESTS") != "child",
    reason="runs in its own process, from tests/test_datasets_ray_process.py (JOBBERT_ONNX_RAY_TESTS=child)")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class NodeRecording(RayEmbedBatches):
    """Notes which node embedded each batch, in OUTPUT/../nodes/."""

    def __call__(self, table: pa.Table) -> pa.Table:
        out = super().__call__(table)
        notes = Path(self.output.path).parent / "nodes"
        notes.mkdir(exist_ok=True)
        (notes / uuid.uuid4().hex).write_text(ray.get_runtime_context().get_node_id())
        return out


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_give_the_local_output(cluster, tmp_path: Path) -> None:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    artifact = toy_artifact.build(tmp_path / "artifact")
    table = rows(1200, distinct=300)
    for i, start in enumerate(range(0, table.num_rows, 300)):
        write(table.slice(start, 300), tmp_path / "in" / f"part-{i}.parquet")
    summary = embed_dataset(artifact, tmp_path / "in", tmp_path / "out", id_column="id", engine="ray", workers=2,
                            batch_rows=100, show_progress=False, ray_udf=NodeRecording)
    nodes = {p.read_text() for p in (tmp_path / "nodes").iterdir()}
    assert len(nodes) == 2  # Ray Data spread the two actors over both nodes
    embed_dataset(artifact, tmp_path / "in", tmp_path / "local", id_column="id", batch_rows=100, show_progress=False)
    ids, vectors = embeddings(tmp_path / "out")
    local_ids, local_vectors = embeddings(tmp_path / "local")
    assert ids.tolist() == local_ids.tolist() == table["id"].to_pylist()
    assert np.array_equal(vectors, local_vectors)
    assert summary["rows_written"] == 1200
