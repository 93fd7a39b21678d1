"""What TensorBoard shows of the training batches every ``train.image_every`` steps."""

from __future__ import annotations

import torch

from dataset.datasets import Batch
from dataset.labels import colorize
from dataset.transforms import denormalize
from model.contract import Segmenter
from utils.evaluation.inference import predicted_train_ids
from utils.logger import MetricWriter
from utils.losses import feature_norm, upsample_to


def log_images(
    writer: MetricWriter,
    model: Segmenter,
    batches: tuple[Batch, Batch | None],
    step: int,
    device: torch.device,
) -> None:
    """The source and target batches' pictures (``picture``) and the histogram of their
    per-pixel feature norms; a domain without a batch (Source only's target) is skipped."""
    for domain, batch in zip(("source", "target"), batches):
        if batch is None:
            continue
        grid, norms = picture(model, batch, device)
        tiles = "input_label_pred_entropy" if batch.label is not None else "input_pred_entropy"
        writer.image(f"{domain}/{tiles}", grid, step)
        writer.histogram(f"{domain}/feat_norm_per_pixel", norms, step)


@torch.no_grad()
def picture(
    model: Segmenter, batch: Batch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """What TensorBoard shows of a batch's first image, in eval mode as evaluation (the picture
    leaves BN's running statistics alone): input | label | prediction | entropy as one
    3 x H x 4W image (3W without a label; a label of another size, from an image-only rescale,
    resized to the image, nearest), and the per-pixel norms of its backbone features (h x w)."""
    from torchvision.utils import make_grid  # (a slow import: on first use only)

    from utils.analysis.panels import entropy_map, heat_colours

    image = batch.image[:1].to(device)
    size = tuple(image.shape[-2:])
    model.eval()
    out = model(image)
    model.train()
    probs = upsample_to(model.predict(out), size).softmax(1)[0].cpu()  # K x H x W
    tiles = [denormalize(image[0].cpu())]
    if batch.label is not None:
        label = batch.label[:1, None].float()
        label = torch.nn.functional.interpolate(label, size=size, mode="nearest")[0, 0].long()
        tiles.append(torch.from_numpy(colorize(label.numpy())).permute(2, 0, 1))
    pred = predicted_train_ids(probs[None])[0].numpy()
    tiles.append(torch.from_numpy(colorize(pred)).permute(2, 0, 1))
    entropy = heat_colours(entropy_map(probs).numpy())
    tiles.append(torch.from_numpy(entropy).permute(2, 0, 1))
    grid = make_grid(torch.stack(tiles), nrow=len(tiles), padding=2)
    return grid, feature_norm(out.features)[0].cpu()
