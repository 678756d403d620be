"""Idle culling decisions: spare busy kernels, terminal processes and busy GPUs; cull the idle.

The GPU path goes through ``FakeGpuProbe`` (named fake: this machine has no GPUs), and
nvidia-smi's CSV is parsed by the real ``NvidiaSmiProbe.parse``."""

import pytest

from fedhub.hub.culler import Activity, GpuProbe, NvidiaSmiProbe, decide

NOW, LIMIT = 10_000.0, 600.0


@pytest.mark.parametrize("activity, cull, why", [
    (Activity(NOW - 3600), True, "idle for 3600 s"),
    (Activity(NOW - 60), False, "active 60 s ago"),
    (Activity(None), True, "never active"),
    (Activity(NOW - 3600, busy_kernels=1), False, "1 kernel(s) busy"),
    (Activity(NOW - 3600, terminal_processes=2), False, "2 process(es) running in terminals"),
    (Activity(NOW - 3600, gpu_utilisation=[0.0, 87.0]), False, "1 GPU(s) in use (87 %)"),
    (Activity(NOW - 3600, gpu_utilisation=[0.0, 1.0]), True, "idle for 3600 s"),
])
def test_decide(activity, cull, why):
    d = decide(activity, NOW, LIMIT)
    assert d.cull is cull and why in d.reason


class FakeGpuProbe(GpuProbe):
    """Named fake: utilisation per GPU index, as nvidia-smi would report it."""

    def __init__(self, table):
        self.table = table

    def utilisation(self, gpu_ids):
        return [self.table[i] for i in gpu_ids if i in self.table]


def test_gpu_in_use_spares_only_the_session_on_that_gpu():
    probe = FakeGpuProbe({0: 95.0, 1: 0.0})
    on_busy = Activity(NOW - 3600, gpu_utilisation=probe.utilisation([0]))
    on_idle = Activity(NOW - 3600, gpu_utilisation=probe.utilisation([1]))
    assert not decide(on_busy, NOW, LIMIT).cull and decide(on_idle, NOW, LIMIT).cull


def test_nvidia_smi_csv_and_absence():
    assert NvidiaSmiProbe.parse("0, 12\n1, [N/A]\n2, 0\n") == {0: 12.0, 2: 0.0}
    assert NvidiaSmiProbe(command="no-such-nvidia-smi").utilisation([0]) == []
