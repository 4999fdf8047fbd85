"""WanLiteStudent behaves like diffusers' WanTransformer3DModel wherever diffusers defines the behaviour (the themes
of diffusers' own model and pipeline tests), and says so where wanlite deliberately differs."""

import json

import pytest
import torch
from conftest import forward

from wanlite.compress import WanLiteStudent
from wanlite.errors import FormatError, SpecError
from wanlite.testing import random_inputs, random_wan, tiny_spec

SPEC = tiny_spec("t2v")


@pytest.fixture(scope="module")
def student():
    model = WanLiteStudent.from_spec(SPEC)
    model.load_state_dict(random_wan(SPEC, seed=3).state_dict())
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(SPEC, seed=4)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# ------------------------------------------------------------------------------------------------ pipeline
def tiny_pipeline(transformer):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae.eval(), scheduler=scheduler, transformer=transformer)


def run(pipe):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 16, 4096, generator=g)
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=torch.zeros_like(embeds),
        height=16,
        width=16,
        num_frames=5,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
    ).frames


def test_wan_pipeline_save_then_from_pretrained_gives_the_same_video(student, tmp_path, capsys):
    from diffusers import WanPipeline

    pipe = tiny_pipeline(student)
    reference = run(pipe)
    pipe.save_pretrained(tmp_path / "pipe")
    assert capsys.readouterr().out == ""  # diffusers logs; it never prints inside a pipeline save
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["transformer"] == ["wanlite.compress.student", "WanLiteStudent"]
    assert json.loads((tmp_path / "pipe" / "transformer" / "config.json").read_text())["_class_name"] == "WanModel"

    no_text = dict(text_encoder=None, tokenizer=None)  # prompt embeddings are given: no umT5 in a unit test
    back = WanPipeline.from_pretrained(tmp_path / "pipe", **no_text)
    assert type(back.transformer) is WanLiteStudent and same_weights(back.transformer, student)
    assert (run(back) - reference).abs().max() <= 1e-6  # same weights; ~1e-7 float noise from their memory layout
    alone = WanLiteStudent.from_pretrained(tmp_path / "pipe", subfolder="transformer")  # diffusers' way to one part
    assert same_weights(alone, student)
    given = WanPipeline.from_pretrained(tmp_path / "pipe", transformer=student, **no_text)  # a component passed in
    assert given.transformer is student and torch.equal(run(given), reference)

    (tmp_path / "pipe" / "transformer" / "notes.txt").write_text("mine")
    pipe.save_pretrained(tmp_path / "pipe")  # again, in place, as diffusers does
    assert (tmp_path / "pipe" / "transformer" / "notes.txt").read_text() == "mine"
    assert (run(WanPipeline.from_pretrained(tmp_path / "pipe", **no_text)) - reference).abs().max() <= 1e-6

    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")  # the variant reaches the transformer both ways
    assert (tmp_path / "fp16" / "transformer" / "diffusion_pytorch_model.fp16.safetensors").exists()
    back = WanPipeline.from_pretrained(tmp_path / "fp16", variant="fp16", **no_text)
    assert same_weights(back.transformer, student)


# ---------------------------------------------------------------------------------------------- save / load
def test_save_pretrained_takes_diffusers_positional_arguments_and_writes_in_place(student, tmp_path, capsys):
    out = tmp_path / "s"
    assert student.save_pretrained(out, False) is None and not out.exists()  # is_main_process=False
    student.save_pretrained(out, True)
    assert capsys.readouterr().out == ""
    (out / "README.md").write_text("my own notes")
    (out / "extra.json").write_text("{}")
    student.save_pretrained(out, max_shard_size="100KB")  # sharded now: the single file goes
    names = sorted(p.name for p in out.iterdir())
    assert "diffusion_pytorch_model.safetensors" not in names and "diffusion_pytorch_model.safetensors.index.json"
    assert {"extra.json", "README.md"} <= set(names) and (out / "README.md").read_text() == "my own notes"
    student.save_pretrained(out)  # single again: the shards and their index go
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "-of-" in n or n.endswith("index.json")]
    assert same_weights(WanLiteStudent.from_pretrained(out), student)
    with pytest.raises(SpecError, match="push_to_hub is not supported.*upload_folder"):
        student.save_pretrained(out, push_to_hub=True)
    with pytest.raises(SpecError, match="pickle is never written"):
        student.save_pretrained(out, safe_serialization=False)
    student.save_pretrained(out, verbose=True)
    assert "Model saved successfully" in capsys.readouterr().out  # printing is asked for, never the default


def test_variants_are_named_and_read_as_diffusers_names_them(student, tmp_path):
    from diffusers import WanTransformer3DModel

    half = WanLiteStudent.from_spec(SPEC)
    half.load_state_dict(student.state_dict())
    half = half.to(torch.float16)
    half.save_pretrained(tmp_path / "w", variant="fp16")
    assert (tmp_path / "w" / "diffusion_pytorch_model.fp16.safetensors").exists()
    with pytest.raises(FormatError, match="variant='fp16'"):
        WanLiteStudent.from_pretrained(tmp_path / "w")
    back = WanLiteStudent.from_pretrained(tmp_path / "w", variant="fp16")
    assert same_weights(back, half) and back.dtype == torch.float16

    half.save_pretrained(tmp_path / "d", variant="fp16", layout="diffusers", max_shard_size="100KB")
    assert (tmp_path / "d" / "diffusion_pytorch_model.safetensors.index.fp16.json").exists()
    theirs = WanTransformer3DModel.from_pretrained(tmp_path / "d", variant="fp16")  # diffusers reads our shards
    ours = WanLiteStudent.from_pretrained(tmp_path / "d", variant="fp16")
    assert same_weights(theirs, half) and same_weights(ours, half)


def test_dtype_alias_keep_in_fp32_and_loading_info_match_diffusers(student, tmp_path):
    from diffusers import WanTransformer3DModel

    student.save_pretrained(tmp_path / "d", layout="diffusers")
    theirs, their_info = WanTransformer3DModel.from_pretrained(
        tmp_path / "d", dtype=torch.bfloat16, output_loading_info=True
    )
    ours, info = WanLiteStudent.from_pretrained(tmp_path / "d", dtype=torch.bfloat16, output_loading_info=True)
    assert info.keys() == their_info.keys() and not any(info.values())
    dtypes = {n: p.dtype for n, p in ours.named_parameters()}
    assert dtypes == {n: p.dtype for n, p in theirs.named_parameters()}
    assert {torch.float32, torch.bfloat16} == set(dtypes.values())  # norms, modulation, time embedder stay fp32
    both = WanLiteStudent.from_pretrained(tmp_path / "d", torch_dtype=torch.float16, dtype=torch.bfloat16)
    assert both.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16  # dtype wins, as in diffusers

    class OneName(WanLiteStudent):
        _keep_in_fp32_modules = "norm2"  # diffusers reads a bare string as one module name (not n, o, r, m, 2)

    one = OneName.from_pretrained(tmp_path / "d", dtype=torch.bfloat16)
    fp32 = {n for n, p in one.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {n for n, _ in one.named_parameters() if "norm2" in n.split(".")} != set()


def test_device_map_forms_and_refused_arguments(student, inputs, tmp_path):
    student.save_pretrained(tmp_path / "s")
    reference = forward(student, inputs)
    for device_map in ("cpu", torch.device("cpu"), {"": "cpu"}, "auto", "sequential"):
        loaded = WanLiteStudent.from_pretrained(tmp_path / "s", device_map=device_map)
        assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6, device_map
    per_module = {n: "cpu" for n, _ in student.named_children() if n != "blocks"} | {"scale_shift_table": "cpu"}
    per_module |= {f"blocks.{i}": "cpu" for i in range(SPEC.num_layers)}  # a module -> device map
    loaded = WanLiteStudent.from_pretrained(tmp_path / "s", device_map=per_module)
    assert (forward(loaded, inputs) - reference).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="low_cpu_mem_usage=False"):
        WanLiteStudent.from_pretrained(tmp_path / "s", device_map="cpu", low_cpu_mem_usage=False)
    with pytest.raises(ValueError, match="device name"):
        WanLiteStudent.from_pretrained(tmp_path / "s", device_map="nowhere")
    assert same_weights(WanLiteStudent.from_pretrained(tmp_path / "s", low_cpu_mem_usage=False), student)
    assert same_weights(WanLiteStudent.from_pretrained(tmp_path / "s", use_safetensors=True), student)
    with pytest.raises(SpecError, match="quantization_config is not supported.*layout='diffusers'"):
        WanLiteStudent.from_pretrained(tmp_path / "s", quantization_config=object())
    with pytest.raises(SpecError, match="use_safetensors is not supported.*never loads pickles"):
        WanLiteStudent.from_pretrained(tmp_path / "s", use_safetensors=False)
    with pytest.raises(SpecError, match="ignore_mismatched_sizes"):
        WanLiteStudent.from_pretrained(tmp_path / "s", ignore_mismatched_sizes=True)
    with pytest.raises(TypeError, match="unexpected argument.*num_layers"):
        WanLiteStudent.from_pretrained(tmp_path / "s", num_layers=1)


def test_rope_length_and_allow_non_comfyui_survive_config_save_and_load(tmp_path):
    long = WanLiteStudent.from_spec(SPEC, rope_max_seq_len=2048)
    assert long.rope.max_seq_len == 2048 == long.config.rope_max_seq_len
    assert WanLiteStudent.from_config(long.config).rope.max_seq_len == 2048
    long.save_pretrained(tmp_path / "long")
    assert WanLiteStudent.from_pretrained(tmp_path / "long").rope.max_seq_len == 2048

    narrow = tiny_spec("t2v", num_heads=4)  # 4 heads of 64: ComfyUI would run 2 of 128
    with pytest.raises(SpecError):
        WanLiteStudent.from_spec(narrow)
    odd = WanLiteStudent.from_spec(narrow, allow_non_comfyui=True)
    again = WanLiteStudent.from_config(odd.config)
    assert again.config.allow_non_comfyui and again.spec == narrow
    for layout, path in (("wan", tmp_path / "odd"), ("diffusers", tmp_path / "odd_d")):
        odd.save_pretrained(path, layout=layout)
        back = WanLiteStudent.from_pretrained(path)
        assert back.config.allow_non_comfyui and back.spec == narrow and same_weights(back, odd)
    from wanlite.formats import save_wan

    save_wan(odd, tmp_path / "theirs", layout="diffusers", allow_non_comfyui=True)  # no wanlite record of the flag
    with pytest.raises(SpecError, match="allow_non_comfyui=True to load it anyway"):
        WanLiteStudent.from_pretrained(tmp_path / "theirs")
    assert WanLiteStudent.from_pretrained(tmp_path / "theirs", allow_non_comfyui=True).spec == narrow


# --------------------------------------------------------------------------------------- training habits
def test_gradient_checkpointing_gives_the_same_gradients(student, inputs):
    model = WanLiteStudent.from_spec(SPEC)
    model.load_state_dict(student.state_dict())
    model.train()

    def grads():
        model.zero_grad()
        out = model(
            hidden_states=inputs["x"],
            timestep=inputs["sigma"] * 1000,
            encoder_hidden_states=inputs["context"],
            return_dict=False,
        )[0]
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_torch_compile_forward_matches_eager(student, inputs):
    compiled = torch.compile(student, backend="aot_eager")
    assert (forward(compiled, inputs) - forward(student, inputs)).abs().max() <= 1e-5


def test_peft_add_adapter(student, inputs):
    from peft import LoraConfig

    model = WanLiteStudent.from_spec(SPEC)
    model.load_state_dict(student.state_dict())
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert (forward(model, inputs) - forward(student, inputs)).abs().max() > 1e-4
    model.disable_adapters()
    assert (forward(model, inputs) - forward(student, inputs)).abs().max() <= 1e-6
