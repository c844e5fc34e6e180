# %% [markdown]
# # Step 8: all of it together
#
# One training step of a tvq model runs every differentiable kernel of the tour in order: rays are
# marched through the octree (step 3, built from depth points as in step 1), the samples gather their
# features through the straight-through codebook (steps 4 and 5), the decoder MLP turns features and
# view directions into density and colour, and compositing (step 6) makes pixels; the loss is the MSE
# against the training pixels, and its gradient flows back through the hand-written adjoints of
# compositing and of the codebook gather into the codebooks and index logits.
#
# Here: the built-in scene at 32x32 pixels, a 4-bit VQ-AD model with feature levels 3, 4, 5 (three
# LODs), a few hundred steps of 1024 rays. Then the model is written as a `.tvq` file, whose every LOD
# is a prefix of the file: each prefix is read back and rendered.

# %%
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tvq import codec, runtime
from tvq.apps.tour.common import Step, figure, table
from tvq.codec.model import to_device
from tvq.data import load_scene
from tvq.data.synthetic import make_scene
from tvq.eval import evaluate
from tvq.export import write_field
from tvq.metrics import psnr
from tvq.render import RenderOptions, render_image
from tvq.train import TrainConfig, Trainer

ITERS = 300
CONFIG = dict(bits=4, max_level=5, num_lods=3, batch_rays=1024, samples_per_cell=2, iters=ITERS, eval_every=0,
              checkpoint_every=0, checkpoint_seconds=0)


# %% [markdown]
# ## Train
#
# `Trainer.train_step()` is one optimiser step: it draws the step's LOD (each finer LOD twice as likely
# as the one before) and its rays from the seed and the step number, renders, and steps Adam. The
# losses stay on the device until the end.

# %%
def train(step: Step, scene_dir: Path, work: Path):
    make_scene(scene_dir, size=32, n_train=32, n_val=0, n_test=2, seed=0)
    scene = load_scene(scene_dir)
    trainer = Trainer(scene, TrainConfig(**CONFIG), work, log=lambda *a: None)
    trainer.setup()
    losses, lods = [], []
    start = time.perf_counter()
    for _ in range(ITERS):
        info = trainer.train_step()
        trainer.step += 1
        losses.append(info["loss"])
        lods.append(info["lod"])
    losses = torch.stack(losses).tolist()
    seconds = time.perf_counter() - start
    first, last = float(np.mean(losses[:20])), float(np.mean(losses[-50:]))
    step.log(f"  {ITERS} steps in {seconds:.1f} s; mean loss of the first 20 steps {first:.4f}, "
             f"of the last 50 {last:.4f}")
    step.holds("the loss falls to less than half", last < 0.5 * first, f"{first:.4f} -> {last:.4f}")
    return scene, trainer, losses, lods, seconds


# %% [markdown]
# ## The loss curve
#
# Every step's loss, coloured by the LOD it trained: coarser LODs (fewer levels summed) fit worse.

# %%
def loss_picture(step: Step, losses, lods, levels) -> None:
    fig = figure(6.0, 3.0)
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    losses, lods = np.asarray(losses), np.asarray(lods)
    for lod in sorted(set(lods.tolist())):
        sel = lods == lod
        ax.scatter(steps[sel], losses[sel], s=4, color=f"C{lod}", label=f"LOD {lod} (level {levels[lod]})")
    window = 20
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1:], smooth, color="k", lw=1, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("MSE", fontsize=8)
    ax.legend(fontsize=7)
    step.picture(fig, "train_loss.png")


# %% [markdown]
# ## The file, LOD by LOD
#
# `write_field` writes the model as a `.tvq` file: header, decoder, then level by level the octree
# structure and the codebook and bit-packed indices. Its report gives each LOD's byte end. Reading the
# first `end` bytes (`codec.read(path, max_bytes=end)`) must give exactly that many LODs, one byte
# fewer must not; and each prefix's render must match the trained model's at that LOD (the file
# keeps fp16 codebooks and an 8-bit decoder, so closely, not exactly).

# %%
def file_lods(step: Step, scene, trainer, path: Path):
    data = trainer.data
    width, height = int(data.images.shape[2]), int(data.images.shape[1])
    cameras = codec.camera_header(data.Ks[0].cpu(), width, height, data.c2ws.cpu())
    report = write_field(path, trainer.field, [float(x) for x in scene.background], cameras)
    step.log(table(["component", "bytes"], [(k, v) for k, v in report["components"].items() if v]))
    view = scene.split("test")[0]
    target = torch.from_numpy(view.image)
    options = RenderOptions(early_stop=True)
    trained_psnr = evaluate(trainer.field, scene.split("test"), data.background, options=options)
    rows, renders = [], []
    device = runtime.device()
    for entry, scores in zip(report["lods"], trained_psnr):
        lod, end = entry["lod"], entry["end"]
        decoded = codec.read(path, max_bytes=end)
        step.holds(f"the first {end} bytes hold LOD {lod}", decoded.lods == lod + 1, f"{decoded.lods} LOD(s)")
        if lod > 0:
            step.holds(f"one byte fewer holds LOD {lod - 1} only", codec.read(path, max_bytes=end - 1).lods == lod)
        field = to_device(decoded.field, device)
        background = torch.tensor(decoded.header["background"], dtype=torch.float32, device=device)
        image = render_image(field, view.K, view.c2w, view.width, view.height, lod, background, options)["color"].cpu()
        trained = render_image(trainer.field, view.K, view.c2w, view.width, view.height, lod, data.background,
                               options)["color"].cpu()
        agreement = psnr(image, trained)
        step.holds(f"LOD {lod} from the file renders the trained model", agreement > 30.0,
                   f"{agreement:.1f} dB between them")
        renders.append((lod, entry["level"], end, psnr(image, target), image))
        rows.append((lod, entry["level"], end, scores["psnr"], psnr(image, target), agreement))
    step.log(table(["LOD", "level", "bytes", "PSNR trained (test)", "PSNR file (view 0)", "file vs trained"], rows,
                   [None, None, None, "{:.2f}", "{:.2f}", "{:.1f}"]))
    return report, renders, target, rows


def lods_picture(step: Step, renders, target) -> None:
    fig = figure(2.0 * (len(renders) + 1), 2.4)
    axes = fig.subplots(1, len(renders) + 1)
    axes[0].imshow(target.clamp(0, 1).numpy(), interpolation="nearest")
    axes[0].set_title("test view", fontsize=8)
    for ax, (lod, level, end, score, image) in zip(axes[1:], renders):
        ax.imshow(image.clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"LOD {lod} (level {level})\nfirst {end:,} bytes, {score:.1f} dB", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    step.picture(fig, "train_lods.png")


# %%
def run(out: Path, log=print) -> dict:
    runtime.ensure()
    with Step("train", out, log) as step, tempfile.TemporaryDirectory(prefix="tvq-tour-") as tmp:
        scene, trainer, losses, lods, seconds = train(step, Path(tmp) / "scene", Path(tmp) / "run")
        loss_picture(step, losses, lods, trainer.field.grid.levels)
        report, renders, target, rows = file_lods(step, scene, trainer, step.out / "tour-model.tvq")
        lods_picture(step, renders, target)
        return step.result(train_seconds=seconds, losses=losses, file_bytes=report["file_bytes"],
                           lods=[{"lod": r[0], "level": r[1], "bytes": r[2], "psnr": r[3]} for r in rows])


if __name__ == "__main__":
    run(Path("tvq-tour"))
