"The model server: answers equal predict_files, bad input gets 4xx JSON, requests batch, SIGTERM is clean."
import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from exp.conv import get_cnn_model, init_cnn
from exp.deploy import export_onnx, export_torchscript, load_exported, model_info, predict_files, save_image
from exp.serve import Batcher, create_app
from exp.training import set_seed

ROOT = Path(__file__).resolve().parents[1]
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")
PNG, JSON = {"content-type": "image/png"}, {"content-type": "application/json"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    "A CNN for 8×8 images (a few training steps), exported both ways, and PNG files of 8 digits-like images."
    folder = tmp_path_factory.mktemp("serve")
    set_seed(0)
    model = init_cnn(get_cnn_model((4, 8)))
    x, y = torch.rand(64, 64), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    info = model_info(8)
    ts = export_torchscript(model.eval(), folder / "m.pt", x, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter announces its deprecation
        onnx_path = export_onnx(model, folder / "m.onnx", x, info)
    images = [save_image(row, folder / f"img{i}.png") for i, row in enumerate(x[:8].numpy())]
    return onnx_path, ts, images, folder


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    "`python -m exp.serve MODEL ...` in a subprocess on a free loopback port."
    def __init__(self, model, *options, log):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "exp.serve", str(model), "--port", port, *options]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited {self.process.returncode}: {log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200: return
            except httpx.TransportError: time.sleep(0.1)
        self.process.kill()
        pytest.fail(f"the server did not answer /health within 90 s: {log.read_text()}")

    def stop(self):
        "SIGTERM; the exit status."
        self.process.send_signal(signal.SIGTERM)
        try: return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None: self.process.kill()


@pytest.fixture(scope="module")
def server(exported):
    onnx_path, _, _, folder = exported
    running = Server(onnx_path, "--max-batch", "8", "--max-wait-ms", "50", "--max-body-bytes", "100000",
                     log=folder / "server.log")
    yield running
    assert running.stop() == 0, (folder / "server.log").read_text()


def post_png(url, path):
    return httpx.post(url + "/predict", content=Path(path).read_bytes(), headers=PNG, timeout=60)


@pytest.mark.slow
def test_health_and_info(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["image_size"] == 8 and info["classes"] == [str(i) for i in range(10)]
    assert (info["max_batch"], info["max_wait_ms"], info["max_body_bytes"]) == (8, 50, 100000)


@pytest.mark.slow
def test_predictions_equal_predict_files(server, exported):
    onnx_path, _, images, _ = exported
    expected = predict_files(onnx_path, images)
    predict, _ = load_exported(onnx_path)
    for path, (_, label, prob) in zip(images, expected):
        answer = post_png(server.url, path).json()
        assert answer["class"] == label and answer["index"] == int(label)
        assert answer["probability"] == pytest.approx(prob, abs=1e-6)
        assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    # the same pixels as JSON, flat and as rows, get the same answer
    from exp.deploy import read_image
    pixels = read_image(images[0], model_info(8))
    for body in (pixels.tolist(), pixels.reshape(8, 8).tolist()):
        answer = httpx.post(server.url + "/predict", json=body).json()
        assert answer["class"] == expected[0][1]
        assert answer["probability"] == pytest.approx(expected[0][2], abs=1e-6)
    logits = predict(pixels[None])[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(answer["probabilities"], probs, atol=1e-6)


BAD_REQUESTS = [  # (what, request arguments, status, words the error must contain)
    ("wrong content type", dict(content=b"hi", headers={"content-type": "text/plain"}), 415, "'text/plain'"),
    ("no content type", dict(content=b"[1]"), 415, "missing"),
    ("malformed JSON", dict(content=b"[0.1, 0.2", headers=JSON), 400, "malformed JSON"),
    ("JSON of the wrong size", dict(json=[0.5] * 10), 422, "shape [10]"),
    ("JSON rows of the wrong size", dict(json=[[0.5] * 7] * 8), 422, "shape [8, 7]"),
    ("JSON that is not numbers", dict(json={"pixels": "x"}), 422, "not an array of numbers"),
    ("pixels outside [0, 1]", dict(json=[255] * 64), 422, "[255.0, 255.0]"),
    ("NaN pixels", dict(content=b"[" + b"NaN," * 63 + b"0]", headers=JSON), 422, "nan"),
    ("not an image", dict(content=b"\x89PNG no", headers=PNG), 422, "not an image"),
    ("too large a body", dict(content=b"0" * 200_000, headers=JSON), 413, "limit is 100000"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what, args, status, words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_json_error_and_the_server_goes_on(server, exported, what, args, status, words):
    response = httpx.post(server.url + "/predict", timeout=60, **args)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()
    assert post_png(server.url, exported[2][0]).status_code == 200


@pytest.mark.slow
def test_wrong_image_size_names_both_sizes(server, exported):
    big = save_image(np.zeros(16 * 16), exported[3] / "big.png")
    response = post_png(server.url, big)
    assert response.status_code == 422
    assert "16×16" in response.json()["error"] and "8×8" in response.json()["error"]


@pytest.mark.slow
def test_unknown_path_and_method_are_json_errors(server):
    missing = httpx.get(server.url + "/nope")
    assert missing.status_code == 404 and "/nope" in missing.json()["error"]
    wrong = httpx.get(server.url + "/predict")
    assert wrong.status_code == 405 and "GET /predict" in wrong.json()["error"]


@pytest.mark.slow
def test_concurrent_requests_are_batched(server, exported):
    onnx_path, _, images, _ = exported
    before = httpx.get(server.url + "/stats").json()["batch_sizes"]

    async def send_together(n):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            bodies = [images[i % len(images)].read_bytes() for i in range(n)]
            return await asyncio.gather(*(client.post("/predict", content=b, headers=PNG) for b in bodies))
    responses = asyncio.run(send_together(24))
    expected = [label for _, label, _ in predict_files(onnx_path, images)]
    assert [r.json()["class"] for r in responses] == [expected[i % len(images)] for i in range(24)]
    after = httpx.get(server.url + "/stats").json()["batch_sizes"]
    new = {int(size): n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in new.items()) == 24  # every request went through exactly one batch
    assert max(new) > 1, f"no batching: batch sizes {new}"
    assert max(new) <= 8  # --max-batch


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_and_exits_0(exported):
    onnx_path, _, images, folder = exported
    # a batch that waits 2 s for company: the request is in flight when SIGTERM arrives
    slow = Server(onnx_path, "--max-batch", "32", "--max-wait-ms", "2000", log=folder / "slow.log")
    result = {}
    thread = threading.Thread(target=lambda: result.update(response=post_png(slow.url, images[0])))
    thread.start()
    deadline = time.monotonic() + 30
    while httpx.get(slow.url + "/stats").json()["waiting"] < 1:
        assert time.monotonic() < deadline, "the request never reached the batcher"
        time.sleep(0.02)
    slow.process.send_signal(signal.SIGTERM)
    assert slow.process.wait(timeout=60) == 0, (folder / "slow.log").read_text()
    thread.join(timeout=60)
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["class"] == predict_files(onnx_path, images[:1])[0][1]
    assert "Finished server process" in (folder / "slow.log").read_text()


@pytest.mark.slow
def test_cli_errors_name_the_problem(tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "exp.serve", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    missing = serve(tmp_path / "none.onnx")
    assert missing.returncode == 1 and "none.onnx" in missing.stderr and "does not exist" in missing.stderr


@pytest.mark.slow
def test_cli_rejects_an_empty_batch(exported):
    command = [sys.executable, "-m", "exp.serve", str(exported[0]), "--max-batch", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "max_batch=0" in result.stderr


def test_batcher_batches_rows_that_arrive_together_and_equals_one_by_one():
    weights = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    calls = []
    def predict(batch):
        calls.append(len(batch))
        return batch @ weights

    async def main():
        batcher = Batcher(predict, max_batch=16, max_wait_ms=20)
        batcher.start()
        rows = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
        outputs = await asyncio.gather(*(batcher.submit(r) for r in rows))
        await batcher.stop()
        return rows, outputs, batcher.batch_sizes
    rows, outputs, sizes = asyncio.run(main())
    assert calls == [16, 16, 8] and dict(sizes) == {16: 2, 8: 1}
    np.testing.assert_allclose(np.stack(outputs), rows @ weights, rtol=1e-6)


def test_batcher_waits_at_most_max_wait_and_runs_a_lone_row():
    async def main():
        batcher = Batcher(lambda b: b * 2, max_batch=32, max_wait_ms=30)
        batcher.start()
        start = time.monotonic()
        out = await batcher.submit(np.ones(3, dtype=np.float32))
        waited = time.monotonic() - start
        await batcher.stop()
        return out, waited
    out, waited = asyncio.run(main())
    np.testing.assert_array_equal(out, [2, 2, 2])
    assert 0.025 <= waited < 5  # waited for company, then ran alone


def test_a_failing_model_fails_its_batch_and_the_batcher_goes_on():
    def predict(batch):
        if (batch < 0).any(): raise ValueError("negative input")
        return batch

    async def main():
        batcher = Batcher(predict, max_batch=4, max_wait_ms=1)
        batcher.start()
        bad = await asyncio.gather(batcher.submit(np.array([-1.0])), return_exceptions=True)
        good = await batcher.submit(np.array([3.0]))
        await batcher.stop()
        return bad, good
    (bad,), good = asyncio.run(main())
    assert isinstance(bad, ValueError) and "negative" in str(bad)
    np.testing.assert_array_equal(good, [3.0])


def test_batcher_rejects_bad_limits_and_use_before_start():
    with pytest.raises(ValueError, match="max_batch=0"): Batcher(lambda b: b, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms=-1"): Batcher(lambda b: b, max_wait_ms=-1)
    with pytest.raises(RuntimeError, match="start"): asyncio.run(Batcher(lambda b: b).submit(np.zeros(2)))


def test_the_app_serves_torchscript_in_process(exported):
    "The same app on a TorchScript model, through Starlette's test client (no sockets)."
    from starlette.testclient import TestClient
    _, ts, images, _ = exported
    predict, info = load_exported(ts)
    expected = predict_files(ts, images[:3])
    with TestClient(create_app(predict, info, max_batch=4, max_wait_ms=1)) as client:
        for path, (_, label, prob) in zip(images, expected):
            answer = client.post("/predict", content=path.read_bytes(), headers=PNG).json()
            assert answer["class"] == label and answer["probability"] == pytest.approx(prob, abs=1e-6)
        assert client.get("/stats").json()["answered"] == 3
        assert client.post("/predict", json=[0.5]).status_code == 422
        assert client.get("/stats").json()["rejected"] == 1
