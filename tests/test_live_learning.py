"""The live server's learning path in one process, on a tiny random model (plumbing): answers generated and logged
by the serving engine, updates run by the learner with the core's objectives and teachers, the exact importance
ratio, the monitors' veto with its rollback, and a failed update."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sdpo_interactions.live.adapters import WEIGHTS_NAME
from sdpo_interactions.live.service import LiveService
from sdpo_interactions.live.settings import LiveArguments, LiveKeys
from sdpo_interactions.live.step import TEACHER_STATE_NAME
from sdpo_interactions.live.store import Generation, new_id

KEYS = LiveKeys("k" * 20, "a" * 20)
OPEN_MONITORS = dict(monitor_min_entropy_ratio=None, monitor_max_entropy_ratio=None, monitor_min_length_ratio=None,
                     monitor_max_length_ratio=None, monitor_max_repetition_increase=None, monitor_min_specificity=None)


@pytest.fixture
def make_service(tiny_model_dir, tmp_path):
    started = []

    def make(**overrides) -> LiveService:
        settings = dict(model_name_or_path=tiny_model_dir, data_dir=str(tmp_path / "live"), lora_r=4, lora_alpha=8,
                        max_completion_tokens=6, monitor_probe_tokens=6, learning_rate=1e-2, samples_per_update=2)
        service = LiveService.build(LiveArguments(**{**settings, **overrides}), KEYS)
        service.engine.start()  # the learner's thread stays off: the tests run its updates themselves
        started.append(service)
        return service

    yield make
    for service in started:
        service.engine.stop()
        service.store.close()


def chat(service: LiveService, user: str, messages: list, **fields) -> tuple[str, dict]:
    raw = json.dumps({"model": "sdpo-live", "messages": messages, "user": user, **fields}).encode()
    prepared = service.prepare(raw)
    completion = service.submit(prepared).result(timeout=120)
    served = service.record(prepared, completion, 0.0)
    return completion.text, served.fields()["sdpo"]


def conversations(service: LiveService, n: int, user: str = "alice") -> list[dict]:
    """n two-turn conversations: n samples, each y written by the version then served."""
    served = []
    for k in range(n):
        messages = [{"role": "user", "content": f"Question {k}?"}]
        answer, first = chat(service, user, messages)
        served.append(first)
        chat(service, user, messages + [{"role": "assistant", "content": answer},
                                        {"role": "user", "content": f"Shorter, please ({k})."}])
    return served


def test_an_update_on_answers_of_the_serving_version_has_a_ratio_of_exactly_one(make_service):
    service = make_service(**OPEN_MONITORS)
    conversations(service, 2)
    assert service.learner.run_update("shared") == "published"
    metrics = json.loads(service.store.query("SELECT metrics FROM updates")[0]["metrics"])
    assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-4) and metrics["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert service.engine.served_versions() == {"shared": 1}
    assert service.store.sample_counts() == {"pending": 0, "claimed": 0, "trained": 2, "rejected": 0}
    _, served = chat(service, "alice", [{"role": "user", "content": "Next?"}])
    assert served["adapter_version"] == 1


def test_answers_of_an_older_version_are_corrected_by_their_logged_log_probs(make_service):
    service = make_service(**OPEN_MONITORS, samples_per_update=1)
    conversations(service, 2)  # both answers written by version 0
    assert service.learner.run_update("shared") == "published"
    assert service.learner.run_update("shared") == "published"  # trains on a version-0 answer with version 1
    first, second = [json.loads(r["metrics"]) for r in service.store.query("SELECT metrics FROM updates ORDER BY id")]
    assert first["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert abs(second["ratio_mean"] - 1.0) > 1e-4  # version 1 differs from the behaviour policy of its sample


def test_a_tripped_monitor_keeps_the_last_good_version_serving(make_service):
    service = make_service(**{**OPEN_MONITORS, "monitor_max_entropy_ratio": 1e-6})
    conversations(service, 2)
    before = {k: v.clone() for k, v in service.learner.training.model.state_dict().items() if "lora_" in k}
    assert service.learner.run_update("shared") == "rejected"
    after = {k: v for k, v in service.learner.training.model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # rolled back to version 0
    assert service.engine.served_versions() == {"shared": 0}
    update = service.store.query("SELECT state, reason, monitors FROM updates")[0]
    assert update["state"] == "rejected" and "entropy_ratio" in update["reason"]
    assert {m["name"] for m in json.loads(update["monitors"])} == {"entropy_ratio", "length_ratio",
                                                                   "repetition_increase", "feedback_specificity"}
    assert service.store.sample_counts()["rejected"] == 2
    assert b'sdpo_live_monitor_trips_total{monitor="entropy_ratio"} 1.0' in service.telemetry.render()


def test_a_failing_update_is_recorded_and_serving_goes_on(make_service):
    service = make_service(**OPEN_MONITORS, samples_per_update=1)
    prompt = [{"role": "user", "content": "Broken?"}]
    generation = Generation(new_id(), new_id(), None, "alice", "key", prompt, "x", "stop", "shared", 0,
                            [10 ** 7], [-1.0], 1.0)  # a token id outside the vocabulary
    service.store.add_generation(generation)
    service.store.add_sample(generation.id, "alice", "shared", "Fix it.")
    assert service.learner.run_update("shared") == "failed"
    assert service.store.query("SELECT state FROM updates")[0]["state"] == "failed"
    assert service.engine.served_versions() == {"shared": 0}
    conversations(service, 1)
    assert service.learner.run_update("shared") == "published"


@pytest.mark.parametrize("mode", ["topk_logits", "full_logits"])
def test_the_logit_modes_train_the_adapter(make_service, mode):
    service = make_service(**OPEN_MONITORS, distillation_mode=mode, distillation_topk=8, distillation_is_clip=2.0)
    conversations(service, 2)
    assert service.learner.run_update("shared") == "published"
    v0, v1 = (load_file(f"{service.files.folder('shared', v)}/{WEIGHTS_NAME}") for v in (0, 1))
    assert any(not torch.equal(v0[k], v1[k]) for k in v0)


def test_an_ema_teacher_moves_only_with_published_updates_and_is_kept_with_them(make_service, tmp_path):
    service = make_service(**OPEN_MONITORS, teacher_model_kind="ema", teacher_update_rate=0.5)
    initial = {k: v.clone() for k, v in service.learner.update.teacher.state_dict().items()}
    conversations(service, 2)
    assert service.learner.run_update("shared") == "published"
    kept = load_file(f"{service.files.folder('shared', 1)}/{TEACHER_STATE_NAME}")
    assert kept.keys() == initial.keys() and any(not torch.equal(kept[k], initial[k]) for k in kept)
    service.engine.stop()
    restarted = make_service(**OPEN_MONITORS, teacher_model_kind="ema", teacher_update_rate=0.5)
    state = restarted.learner.update.teacher.state_dict()
    assert all(torch.equal(state[k].cpu(), kept[k]) for k in kept)


def test_an_ema_teacher_with_teacher_sync_steps_follows_every_second_version(make_service):
    service = make_service(**OPEN_MONITORS, teacher_model_kind="ema", teacher_update_rate=0.5, teacher_sync_steps=2)
    initial = {k: v.clone() for k, v in service.learner.update.teacher.state_dict().items()}
    kept = {}
    for version in (1, 2):
        conversations(service, 2)
        assert service.learner.run_update("shared") == "published"
        kept[version] = load_file(f"{service.files.folder('shared', version)}/{TEACHER_STATE_NAME}")
    assert all(torch.equal(kept[1][k], initial[k].cpu()) for k in initial)  # version 1: not on the rhythm
    assert any(not torch.equal(kept[2][k], initial[k].cpu()) for k in initial)  # version 2: it followed


def test_a_base_teacher_scores_with_the_adapter_off(make_service):
    """The base teacher is the model without the adapter: its logits are the same before and after the adapter
    trained, while the adapter itself moved."""
    service = make_service(**OPEN_MONITORS, teacher_model_kind="base")
    update = service.learner.update
    ids = torch.tensor([[1, 2, 3, 4]], device=update.device)

    @torch.no_grad()
    def logits(teacher: bool) -> torch.Tensor:
        if not teacher:
            return update.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        with update.teacher.weights() as model:
            return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()

    before = logits(teacher=True)
    torch.testing.assert_close(logits(teacher=False), before, rtol=0, atol=0)  # a fresh adapter changes nothing
    conversations(service, 2)
    assert service.learner.run_update("shared") == "published"
    torch.testing.assert_close(logits(teacher=True), before, rtol=0, atol=0)
    assert not torch.equal(logits(teacher=False), before)  # the adapter itself did train
