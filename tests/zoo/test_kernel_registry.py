"""The kernel registry (zoo/kernels/registry.py): which implementation each call goes to, on this CPU
with its compiled kernels, with kernels switched off, on a device without kernels, and its errors."""

from __future__ import annotations

import pytest
import torch

import zoo
import zoo.attention
import zoo.dropout
import zoo.norms
import zoo.rope  # noqa: F401  (registers the ops)
from zoo.kernels import registry

from .kernel_switch import kernels_off


def attention_entry(q, *, backend="auto", need_weights=False, dropout_p=0.0, v=None):
    v = q if v is None else v
    return registry.select("softmax_attention", q, q, v, None, 1.0, dropout_p, backend=backend,
                           need_weights=need_weights).name


def test_each_op_goes_to_the_cpu_kernel_here_and_to_its_reference_without_it(monkeypatch):
    x = torch.zeros(2, 1, 4, 8, dtype=torch.bfloat16)
    cos = sin = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16)
    assert registry.select("rms_norm", x, 1e-6).name == "cpu-kernel"
    assert registry.select("rope", x, cos, sin).name == "cpu-kernel"
    assert registry.select("dropout", x, 0.1).name == "cpu-kernel"
    assert attention_entry(x) == "blocked-cpu-kernel"
    kernels_off(monkeypatch, "elementwise", "dropout", "attention")
    assert registry.select("rms_norm", x, 1e-6).name == "reference"
    assert registry.select("rope", x, cos, sin).name == "reference"
    assert registry.select("dropout", x, 0.1).name == "cpu-lanes"
    assert attention_entry(x) == "matmul"


def test_a_device_without_kernels_takes_the_pytorch_paths():
    x = torch.zeros(2, 1, 4, 8, dtype=torch.bfloat16, device="meta")
    cos = sin = torch.zeros(1, 1, 4, 4, dtype=torch.bfloat16, device="meta")
    assert registry.select("rms_norm", x, 1e-6).name == "reference"
    assert registry.select("rope", x, cos, sin).name == "reference"
    assert registry.select("dropout", x, 0.1).name == "torch"
    assert attention_entry(x) == "matmul"
    assert attention_entry(x, backend="sdpa") == "sdpa-requested"


def test_the_attention_policy_on_the_cpu():
    bf16, fp32 = torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16), torch.zeros(1, 2, 4, 8)
    assert attention_entry(fp32) == "sdpa-fp32-inference"  # no gradient, no dropout
    assert attention_entry(fp32.clone().requires_grad_()) == "blocked-cpu-kernel"
    assert attention_entry(fp32, dropout_p=0.1) == "blocked-cpu-kernel"
    with torch.no_grad():
        assert attention_entry(fp32.clone().requires_grad_()) == "sdpa-fp32-inference"
    assert attention_entry(bf16) == "blocked-cpu-kernel"
    assert attention_entry(fp32, backend="matmul") == "blocked-cpu-kernel"
    assert attention_entry(bf16, backend="sdpa") == "sdpa-requested"
    assert attention_entry(bf16, backend="sdpa", need_weights=True) == "with-weights"
    assert attention_entry(fp32.double()) == "matmul"
    assert attention_entry(torch.zeros(1, 2, 0, 8)) == "sdpa-fp32-inference"
    assert attention_entry(torch.zeros(1, 2, 0, 8, dtype=torch.bfloat16)) == "matmul"  # the kernel needs rows


def test_the_cuda_entries_take_what_they_are_registered_for():
    """No CUDA here: the entries' device and dtype keys and GAU's shape predicate, checked directly."""
    entries = {kernel.name: kernel for kernel in registry.implementations("softmax_attention")}
    assert [name for name, k in entries.items() if k.takes("cuda", torch.bfloat16)] == [
        "sdpa-shared-qk", "sdpa", "sdpa-requested", "with-weights", "triton", "matmul"]
    q, wide_v = torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 12)
    options = dict(backend="auto", need_weights=False)
    assert zoo.attention.gau_wide_head(q, q, wide_v, None, 1.0, 0.0, **options)
    assert not zoo.attention.gau_wide_head(q, q, q, None, 1.0, 0.0, **options)  # v as wide as q
    assert not zoo.attention.gau_wide_head(q, q, torch.zeros(2, 1, 5, 10), None, 1.0, 0.0, **options)  # not a multiple
    assert not zoo.attention.gau_wide_head(q, q, wide_v, None, 1.0, 0.0, backend="matmul", need_weights=False)
    assert not zoo.attention.gau_wide_head(q, q, wide_v, None, 1.0, 0.0, backend="auto", need_weights=True)
    # the explicit attention's Triton entry: asked for ("matmul"), rows of keys that one program takes
    triton_softmax_attention = pytest.importorskip("zoo.kernels.triton_softmax_attention", reason="Triton is not installed")
    explicit = zoo.attention.triton_explicit_applies
    assert explicit(q, q, wide_v, None, 1.0, 0.0, backend="matmul", need_weights=False)
    assert not explicit(q, q, wide_v, None, 1.0, 0.0, backend="auto", need_weights=False)
    assert not explicit(q, q, wide_v, None, 1.0, 0.0, backend="matmul", need_weights=True)
    long_keys = torch.zeros(1, 1, triton_softmax_attention.MAX_WIDTH + 1, 4)
    assert not explicit(q, long_keys, long_keys, None, 1.0, 0.0, backend="matmul", need_weights=False)
    assert not explicit(q[:, :, :0], q, q, None, 1.0, 0.0, backend="matmul", need_weights=False)  # no query rows
    # v broadcast over more heads than q and k (the kernels would pair the wrong rows), or of a dtype they lack
    assert not explicit(q, q, wide_v.expand(2, 3, 5, 12), None, 1.0, 0.0, backend="matmul", need_weights=False)
    assert not explicit(q, q, wide_v.double(), None, 1.0, 0.0, backend="matmul", need_weights=False)
    traced = torch.compile(explicit, backend="eager", fullgraph=True)
    assert not traced(q, q, wide_v, None, 1.0, 0.0, backend="matmul", need_weights=False)  # inductor fuses the reference


def test_a_new_entry_slots_in_before_another_and_is_gone_after_the_block():
    x = torch.zeros(3, 8)
    calls = []
    with registry.registered("rms_norm", "experiment", lambda x, eps: calls.append(eps) or x, before="cpu-kernel"):
        assert zoo.norms.RMSNorm(1e-5)(x) is x
        assert [k.name for k in registry.implementations("rms_norm")] == ["experiment", "cpu-kernel", "torch-fused",
                                                                             "reference"]
    assert calls == [1e-5]
    assert [k.name for k in registry.implementations("rms_norm")] == ["cpu-kernel", "torch-fused", "reference"]


def test_extended_lets_the_cuda_entries_of_a_name_take_cpu_tensors_for_the_block():
    before = {op: [k.name for k in registry.implementations(op)] for op in ("residual_norm", "scale_offset_pair", "rope")}
    z = torch.zeros(2, 3, 8)
    plain = zoo.norms.ScaleOffset(8, offset=False)
    with registry.extended("triton", "cpu"):
        names = [k.name for k in registry.implementations("scale_offset_pair")]
        assert names == ["triton-on-cpu", "triton", "reference"]  # tried where the entry itself is
        entry = registry.select("scale_offset_pair", z, plain, plain)
        assert entry.name == "triton-on-cpu" and entry.fn is zoo.norms.triton_scale_pair
        assert not entry.takes("cuda", torch.float32) and entry.takes("cpu", torch.bfloat16)
        assert registry.select("scale_offset_pair", z.double(), plain, plain).name == "reference"  # dtypes kept
        assert registry.select("scale_offset_pair", z[0], plain, plain).name == "reference"  # and the predicate
        # RoPE's Triton entry is the operator with CUDA's output layout: on CPU tensors, after the CPU kernel's
        # entry, it runs the C++ kernel keeping q's layout
        assert [k.name for k in registry.implementations("rope")] == ["cpu-kernel", "triton-on-cpu", "triton",
                                                                       "reference"]
        q = torch.zeros(2, 5, 3, 8).transpose(1, 2)
        cos = sin = torch.ones(1, 1, 5, 4)
        with registry.disabled("rope:cpu-kernel"):
            assert registry.select("rope", q, cos, sin).name == "triton-on-cpu"
            assert zoo.rope.apply_rope(q, cos, sin).stride() == q.stride()
        assert zoo.rope.apply_rope(q, cos, sin).is_contiguous()  # the CPU kernel's: what the CPU attention reads
        with registry.disabled("triton"):
            assert registry.select("scale_offset_pair", z, plain, plain).name == "reference"
    assert {op: [k.name for k in registry.implementations(op)] for op in before} == before


def test_disabled_switches_off_an_entry_a_name_or_a_module_for_the_block():
    x = torch.zeros(2, 8)
    with registry.disabled("rms_norm:cpu-kernel"):
        assert registry.select("rms_norm", x, 1e-6).name == "reference"
        assert registry.select("dropout", x, 0.1).name == "cpu-kernel"
    with registry.disabled("cpu-kernel"):
        assert registry.select("rms_norm", x, 1e-6).name == "reference"
        assert registry.select("dropout", x, 0.1).name == "cpu-lanes"
    with registry.disabled("dropout"):
        assert registry.select("rms_norm", x, 1e-6).name == "cpu-kernel"
        assert registry.select("dropout", x, 0.1).name == "cpu-lanes"
    assert registry.select("dropout", x, 0.1).name == "cpu-kernel"
    assert registry.DISABLED == set()


def test_registry_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="rms_norm already has an implementation called 'reference'"):
        registry.register("rms_norm", "reference")(lambda x, eps: x)
    with pytest.raises(ValueError, match=r"no implementation 'fast' to go before; it has \['cpu-kernel', 'torch-fused', "
                                           r"'reference'\]"):
        registry.register("rms_norm", "new", before="fast")(lambda x, eps: x)
    with pytest.raises(KeyError, match="no operation 'layernorm'"):
        registry.select("layernorm", torch.zeros(2))
    with registry.disabled("rms_norm:reference", "cpu-kernel"):  # torch-fused is for CUDA
        with pytest.raises(RuntimeError, match="no implementation of rms_norm takes a torch.float32 tensor on cpu"):
            registry.select("rms_norm", torch.zeros(2), 1e-6)
    assert [k.name for k in registry.implementations("rms_norm")] == ["cpu-kernel", "torch-fused", "reference"]


def test_describe_lists_every_op_in_order():
    text = registry.describe()
    for op in ("dropout", "layer_norm", "rms_norm", "rope", "softmax_attention"):
        assert f"\n{op}\n" in f"\n{text}\n"
    assert "  cpu-kernel: cpu; float32,bfloat16, needs the elementwise kernels" in text
    assert text.index("sdpa-shared-qk") < text.index("blocked-cpu-kernel") < text.index("  matmul: any device")


def chosen_attention(monkeypatch) -> list[str]:
    """The names of the softmax-attention entries calls go to from now on (appended as they run)."""
    names, select = [], registry.select

    def recording(op, *args, **kwargs):
        kernel = select(op, *args, **kwargs)
        if op == "softmax_attention":
            names.append(kernel.name)
        return kernel

    monkeypatch.setattr(registry, "select", recording)
    return names


@pytest.mark.parametrize("family", ["roformer-v2", "gau-alpha", "deepnet"])
def test_attn_implementation_chooses_the_kernel_over_the_saved_backend(family, tmp_path, monkeypatch):
    from .test_models import make_config

    config = make_config(family, attention_backend="matmul", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    zoo.families.model_class(config, "masked-lm")(config).save_pretrained(tmp_path)
    ids = torch.randint(5, 97, (2, 9))
    names = chosen_attention(monkeypatch)

    saved = zoo.from_pretrained(tmp_path)  # nothing requested: the saved attention_backend
    assert saved.config._attn_implementation is None and saved.config.active_attention_backend == "matmul"
    expected = saved(ids).logits
    assert set(names) == {"blocked-cpu-kernel"}

    names.clear()
    model = zoo.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa" and model.config.active_attention_backend == "sdpa"
    torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)  # fp32, two summation orders
    assert set(names) == {"sdpa-requested"}

    names.clear()
    model.set_attn_implementation("eager")
    model(ids)
    assert set(names) == {"blocked-cpu-kernel"}
    assert model.config.attention_backend == "matmul"  # the saved choice itself is untouched

    model.save_pretrained(tmp_path / "resaved")
    assert zoo.from_pretrained(tmp_path / "resaved").config._attn_implementation is None


def test_attn_implementations_that_do_not_map_are_refused_by_name(tmp_path):
    from .test_models import make_config

    config = make_config("gau-alpha")
    model = zoo.families.model_class(config, "masked-lm")(config)
    for name in ("flash_attention_2", "flex_attention"):
        with pytest.raises(ValueError, match=f"does not support attn_implementation='{name}': use 'eager' or 'sdpa'"):
            model.set_attn_implementation(name)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        zoo.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


@pytest.mark.parametrize("value,off", [
    ("", set()), ("0", set()), ("1", {"dropout", "attention", "elementwise", "triton"}),
    ("cpu", {"dropout", "attention", "elementwise"}), ("triton", {"triton"}),
    ("attention, triton", {"attention", "triton"}),
])
def test_zoo_disable_kernels_names_what_it_switches_off(value, off, monkeypatch):
    """ZOO_DISABLE_KERNELS=cpu keeps the Triton kernels (a GPU machine that should not build the C++
    ones: scripts/gpu_checks.sh); =1 switches every compiled module off."""
    from zoo.kernels import disabled_by_environment

    monkeypatch.setenv("ZOO_DISABLE_KERNELS", value)
    assert {name for name in ("dropout", "attention", "elementwise", "triton") if disabled_by_environment(name)} == off


def test_zoo_disable_kernels_refuses_an_unknown_module(monkeypatch):
    from zoo.kernels import disabled_by_environment

    monkeypatch.setenv("ZOO_DISABLE_KERNELS", "cpu,cuda")
    with pytest.raises(ValueError, match=r"ZOO_DISABLE_KERNELS='cpu,cuda': unknown module\(s\) \['cuda'\]"):
        disabled_by_environment("triton")


def test_zoo_disable_kernels_cpu_in_a_fresh_process_keeps_triton():
    """In a new process (the variable is read when a module is first loaded): the C++ kernels are not
    built and the registry sends the CPU's RMS norm to its reference, while Triton stays available."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="Triton is not installed (pip install -e .[test])")
    code = ("import torch, zoo; from zoo.kernels import available, registry; "
            "print(available('elementwise'), available('triton'), "
            "registry.select('rms_norm', torch.zeros(2, 4), 1e-6).name)")
    env = {**os.environ, "ZOO_DISABLE_KERNELS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True", "reference"]


@pytest.mark.parametrize("preset", ["roformer-v2-mini", "gau-alpha-mini"])
@pytest.mark.parametrize("left_on", [["EFFICIENT_ATTENTION"], ["FLASH_ATTENTION"], ["MATH"]])
def test_a_callers_sdpa_restriction_is_kept_or_the_next_entry_runs(preset, left_on):
    """A `torch.nn.attention.sdpa_kernel(...)` around the model leaves only some of sdpa's backends on.
    Where one of them takes the call, sdpa runs (the caller's choice); where none does, the registry's
    next entry runs (our kernels) where sdpa failed with "No available kernel". Here fp32 inference of a
    padded batch on the CPU, which "auto" gives to sdpa: the math kernel takes it, the CPU's fused one
    (FLASH_ATTENTION) only where v is as wide as q (not GAU's wide head), the memory-efficient one is
    CUDA's alone. On CUDA flash takes no mask and no fp32."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = zoo.create(preset).eval()
    ids = torch.randint(1, 100, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    chosen = []
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        select = registry.select

        def recording(op, *args, **kwargs):
            kernel = select(op, *args, **kwargs)
            chosen.append(kernel.name) if op == "softmax_attention" else None
            return kernel

        with pytest.MonkeyPatch.context() as patch, sdpa_kernel([getattr(SDPBackend, name) for name in left_on]):
            patch.setattr(registry, "select", recording)
            out = model(input_ids=ids, attention_mask=mask).logits
    takes = left_on == ["MATH"] or (left_on == ["FLASH_ATTENTION"] and preset.startswith("roformer"))
    assert set(chosen) == ({"sdpa-fp32-inference"} if takes else {"blocked-cpu-kernel"})
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # fp32 kernels summing in other orders


@pytest.mark.parametrize("disabled, failing", [("", None), ("dropout", None), ("", "attention")])
def test_the_first_use_of_a_cpu_kernel_builds_every_one_at_once(disabled, failing, monkeypatch):
    """Each C++ module is one compiler process of about 20 s, and a CPU model's first training step uses
    all three: the first use of any builds every one not switched off, concurrently (the stand-in builds
    meet at a barrier, which builds one after another never reach) and once. A module that cannot be
    built is None without holding back the others."""
    import threading

    import zoo.kernels as kernels

    monkeypatch.setattr(kernels, "_BUILT", {})
    monkeypatch.setenv("ZOO_DISABLE_KERNELS", disabled)
    wanted = [name for name in kernels.SOURCES if name != disabled]
    meeting = threading.Barrier(len(wanted), timeout=30)
    built = []

    def build(name, source):
        meeting.wait()  # BrokenBarrierError unless every wanted build runs at the same time
        built.append(name)
        return None if name == f"zoo_{failing}_cpu" else f"{source} built"

    monkeypatch.setattr(kernels, "_build", build)
    assert kernels.compiled("elementwise") == "elementwise_cpu.cpp built"
    assert sorted(built) == sorted(f"zoo_{name}_cpu" for name in wanted)
    expected = {name: None if name in (disabled, failing) else f"{source} built"
                for name, source in kernels.SOURCES.items()}
    assert {name: kernels.compiled(name) for name in kernels.SOURCES} == expected
    assert kernels.build_cpu_kernels() == expected
    assert len(built) == len(wanted)  # nothing built twice
