import json

import pytest
import torch
from PIL import Image, ImageDraw

from chatrex.data.seeded_index import SeededIndex
from chatrex.data.upn_dataset import UPNDataConfig, UPNDataset, collate_upn, region_boxes
from chatrex.training.config import TrainConfig
from chatrex.training.trainer import Trainer
from chatrex.training.upn.criterion import UPNCriterion
from chatrex.training.upn.denoising import DenoisingConfig, DenoisingGenerator, dn_positive_indices, inverse_sigmoid
from chatrex.training.upn.matcher import batched_generalized_box_iou, hungarian_match, hungarian_match_layers
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss
from chatrex.training.upn.task import UPNTask, UPNTaskConfig


def _records(tmp_path, n=4):
    (tmp_path / "images").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        im = Image.new("RGB", (96, 64), (30, 30, 30))
        d = ImageDraw.Draw(im)
        box = [10 + 5 * i, 8, 50 + 5 * i, 40]
        part = [12 + 5 * i, 10, 30 + 5 * i, 24]
        d.rectangle(box, fill=(200, 40, 40))
        d.rectangle(part, fill=(40, 200, 40))
        im.save(tmp_path / "images" / f"{i}.png")
        lines.append({"id": str(i), "image": f"images/{i}.png", "width": 96, "height": 64,
                      "regions": [{"id": 0, "box": box, "category": "block", "level": "instance"},
                                  {"id": 1, "box": part, "category": "patch", "level": "part", "parent": 0}]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_region_boxes_by_granularity():
    rec = {"regions": [{"id": 0, "box": [0, 0, 4, 4], "level": "instance"},
                       {"id": 1, "box": [1, 1, 2, 2], "level": "part", "parent": 0}]}
    assert region_boxes(rec, "coarse") == [[0, 0, 4, 4]]
    assert len(region_boxes(rec, "fine")) == 2
    assert region_boxes(rec, "fine", "parts") == [[1, 1, 2, 2]]
    with pytest.raises(ValueError, match="granularity"):
        region_boxes(rec, "medium")


def test_dataset_flip_and_normalisation(tmp_path):
    path = _records(tmp_path, 1)
    ds = UPNDataset(UPNDataConfig(files=[str(path)], scales=[64], max_size=200, flip=0.0))
    item = ds[SeededIndex(0, 5)]
    assert item["image"].shape == (3, 64, 96)
    torch.testing.assert_close(item["boxes"]["coarse"], torch.tensor([[30 / 96, 24 / 64, 40 / 96, 32 / 64]]))
    flipped = UPNDataset(UPNDataConfig(files=[str(path)], scales=[64], max_size=200, flip=1.0))[SeededIndex(0, 5)]
    torch.testing.assert_close(flipped["boxes"]["coarse"][0, 0], 1 - item["boxes"]["coarse"][0, 0])
    batch = collate_upn([item, flipped])
    assert batch["images"].shape == (2, 3, 64, 96) and not batch["mask"].any()
    assert len(batch["targets"]["fine"][0]) == 2


def test_matcher_recovers_permutation():
    tgt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.2, 0.3]])
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.3], [0.7, 0.6, 0.2, 0.3], [0.2, 0.2, 0.1, 0.1]]])
    logits = torch.zeros(1, 3, 1)
    (qi, ti), = hungarian_match(logits, boxes, [tgt])
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 2, 1: 1}
    (qe, te), = hungarian_match(logits, boxes, [torch.zeros(0, 4)])
    assert qe.numel() == 0


def test_matcher_refuses_non_finite_predictions():
    """A NaN prediction fails loudly instead of being matched as if its cost were merely high."""
    tgt = torch.tensor([[0.2, 0.2, 0.1, 0.1]])
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.3], [0.2, 0.2, 0.1, 0.1]]])
    boxes[0, 0, 1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"L1, GIoU term.*1 box values, 0 logits"):
        hungarian_match(torch.zeros(1, 2, 1), boxes, [tgt])
    logits = torch.tensor([[[float("nan")], [0.0]]])
    with pytest.raises(FloatingPointError, match=r"the class term.*0 box values, 1 logits"):
        hungarian_match(logits, boxes.nan_to_num(0.5), [tgt])


def test_criterion_perfect_vs_wrong_predictions():
    tgt = [torch.tensor([[0.3, 0.3, 0.2, 0.2]])]
    good = {"pred_logits": torch.tensor([[[8.0], [-8.0]]]), "pred_boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])}
    bad = {"pred_logits": torch.tensor([[[-8.0], [8.0]]]), "pred_boxes": torch.tensor([[[0.6, 0.6, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])}
    crit = UPNCriterion()
    lg, logs = crit(good, tgt)
    lb, _ = crit(bad, tgt)
    assert float(logs["loss_l1"]) == pytest.approx(0.0, abs=1e-6)
    assert float(logs["loss_giou"]) == pytest.approx(0.0, abs=1e-5)
    assert float(lb) > float(lg) + 1.0


def test_denoising_queries_layout_and_mask():
    gen = DenoisingGenerator(8, DenoisingConfig(num_queries=12, box_noise_scale=0.4)).train()
    targets = [torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.2]]), torch.zeros(0, 4)]
    dn = gen(targets, num_matching_queries=5, generator=torch.Generator().manual_seed(0))
    meta = dn["meta"]
    assert meta == {"pad_size": 12, "num_groups": 3, "max_gt": 2, "num_gt": [2, 0]}
    assert dn["dn_content"].shape == (2, 12, 8) and dn["dn_refpoints"].shape == (2, 12, 4)
    m = dn["dn_attn_mask"]
    assert m.shape == (17, 17)
    assert m[12:, :12].all() and not m[12:, 12:].any()  # matching queries never see dn queries
    assert not m[0:4, 0:4].any() and m[0:4, 4:12].all()  # group 0 sees only itself
    group = torch.arange(12) // 4
    assert torch.equal(m[:12, :12], group[:, None] != group[None, :])  # every group sees only itself
    # an image without boxes gets only background slots: centred boxes of a tenth of the image
    assert torch.allclose(dn["dn_refpoints"].sigmoid()[1], torch.tensor([0.5, 0.5, 0.1, 0.1]).expand(12, 4), atol=1e-6)
    # positives stay close to their box, negatives are farther
    boxes = dn["dn_refpoints"].sigmoid()[0]
    pos_err = (boxes[0] - targets[0][0]).abs().max()
    assert pos_err <= 0.2 * 0.4 / 2 * 2 + 1e-4
    # each negative corner moves by one to two noise half-sizes (0.4 * w / 2): never less than one
    corners = box_convert(boxes[[2, 6, 10]], "cxcywh", "xyxy") - box_convert(targets[0][0], "cxcywh", "xyxy")
    assert (corners.abs() >= 0.2 * 0.4 / 2 - 1e-4).all() and (corners.abs() <= 0.2 * 0.4 + 1e-4).all()
    idx = dn_positive_indices(meta)
    assert idx[0][0].tolist() == [0, 1, 4, 5, 8, 9] and idx[0][1].tolist() == [0, 1, 0, 1, 0, 1]
    assert idx[1][0].numel() == 0
    assert gen.eval()(targets, 5) is None
    assert torch.allclose(inverse_sigmoid(torch.tensor([0.5])), torch.tensor([0.0]))


def test_upn_training_step_and_export(tmp_path):
    path = _records(tmp_path, 4)
    task = UPNTask(UPNTaskConfig.from_dict({"model": "upn_tiny", "data": {"files": [str(path)], "scales": [64, 72]},
                                            "denoising": {"num_queries": 8}}))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=2, lr=1e-4, warmup_steps=1,
                      save_every=3, log_every=1, num_workers=0)
    Trainer(task, cfg, device="cpu", progress=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for key in ("loss", "loss_fine", "loss_coarse", "loss_dn_fine", "loss_aux_coarse"):
        assert key in rows[0] and rows[0][key] > 0, key
    from chatrex.upn.wrapper import UPNWrapper

    wrapper = UPNWrapper(str(tmp_path / "run" / "final"), device="cpu", resize=64, max_size=128)
    props = wrapper.inference(str(tmp_path / "images" / "0.png"), prompt_type="coarse")
    assert props["original_xyxy_boxes"].shape == (1, 20, 4)


def test_batched_matching_equals_matching_each_image_alone():
    g = torch.Generator().manual_seed(3)
    B, Q = 4, 12
    logits = torch.randn(B, Q, 1, generator=g)
    boxes = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.6 + 0.2, torch.rand(B, Q, 2, generator=g) * 0.3 + 0.05], -1)
    targets = [torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], -1)
               for n in (3, 0, 7, 1)]
    batched = hungarian_match(logits, boxes, targets)
    for b in range(B):
        (qi, ti), = hungarian_match(logits[b:b + 1], boxes[b:b + 1], [targets[b]])
        assert torch.equal(batched[b][0], qi) and torch.equal(batched[b][1], ti)
        assert len(qi) == targets[b].shape[0]


def _random_boxes(g, *shape):
    return torch.cat([torch.rand(*shape, 2, generator=g) * 0.6 + 0.2, torch.rand(*shape, 2, generator=g) * 0.3 + 0.05], -1)


def test_batched_generalized_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a = box_convert(_random_boxes(g, 2, 3, 5), "cxcywh", "xyxy")  # (layers, images, queries, 4)
    b = box_convert(_random_boxes(g, 2, 3, 4), "cxcywh", "xyxy")
    got = batched_generalized_box_iou(a, b)
    assert got.shape == (2, 3, 5, 4)
    for layer in range(2):
        for i in range(3):
            assert torch.equal(got[layer, i], generalized_box_iou(a[layer, i], b[layer, i]))
    assert torch.equal(batched_generalized_box_iou(a[0, 0], b[0, 0]), generalized_box_iou(a[0, 0], b[0, 0]))
    with pytest.raises(ValueError, match="leading dimensions"):
        batched_generalized_box_iou(a, b[0])


def test_matching_layers_together_equals_matching_each_layer():
    g = torch.Generator().manual_seed(1)
    L, B, Q = 3, 2, 10
    logits, boxes = torch.randn(L, B, Q, 1, generator=g), _random_boxes(g, L, B, Q)
    targets = [_random_boxes(g, 4), _random_boxes(g, 0)]
    together = hungarian_match_layers(logits, boxes, targets)
    for layer in range(L):
        alone = hungarian_match(logits[layer], boxes[layer], targets)
        for (qa, ta), (qb, tb) in zip(together[layer], alone):
            assert torch.equal(qa, qb) and torch.equal(ta, tb)
    with pytest.raises(ValueError, match="target sets"):
        hungarian_match_layers(logits, boxes, targets[:1])


def _reference_set_loss(out, targets, pairs, num_boxes):
    """One layer's weighted loss, written image by image with torchvision's losses."""
    onehot = torch.zeros_like(out["pred_logits"])
    l1 = giou = 0.0
    for b, (qi, ti) in enumerate(pairs):
        onehot[b, qi, 0] = 1.0
        s, t = out["pred_boxes"][b, qi], targets[b][ti]
        l1 = l1 + (s - t).abs().sum()
        giou = giou + generalized_box_iou_loss(box_convert(s, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"),
                                               reduction="sum")
    focal = sigmoid_focal_loss(out["pred_logits"], onehot, alpha=0.25, gamma=2.0, reduction="sum")
    return (focal + 5 * l1 + 2 * giou) / num_boxes


def test_criterion_equals_the_per_image_per_layer_losses():
    g = torch.Generator().manual_seed(2)
    B, Q, P = 3, 12, 8
    targets = [_random_boxes(g, 2), _random_boxes(g, 0), _random_boxes(g, 4)]

    def layer(q):
        return {"pred_logits": torch.randn(B, q, 1, generator=g).requires_grad_(),
                "pred_boxes": _random_boxes(g, B, q).requires_grad_()}

    out = layer(Q)
    out["aux_outputs"] = [layer(Q), layer(Q)]
    out["enc_outputs"] = layer(Q)
    out["dn_outputs"] = layer(P)
    out["dn_outputs"]["aux_outputs"] = [layer(P)]
    out["dn_meta"] = {"pad_size": P, "num_groups": 1, "max_gt": 4, "num_gt": [2, 0, 4]}
    total, logs = UPNCriterion()(out, targets)

    matched = [out, *out["aux_outputs"], out["enc_outputs"]]
    ref = [_reference_set_loss(o, targets, hungarian_match(o["pred_logits"], o["pred_boxes"], targets), 6.0)
           for o in matched]
    dn_pairs = dn_positive_indices(out["dn_meta"])
    ref_dn = [_reference_set_loss(o, targets, dn_pairs, 6.0) for o in (out["dn_outputs"], *out["dn_outputs"]["aux_outputs"])]
    assert float(logs["loss_aux"]) == pytest.approx(sum(r.item() for r in ref[1:]), rel=1e-5)
    assert float(logs["loss_dn"]) == pytest.approx(sum(r.item() for r in ref_dn), rel=1e-5)
    assert total.item() == pytest.approx(sum(r.item() for r in ref + ref_dn), rel=1e-5)
    grads = torch.autograd.grad(total, [out["pred_boxes"], out["dn_outputs"]["pred_logits"]])
    ref_grads = torch.autograd.grad(sum(ref) + sum(ref_dn), [out["pred_boxes"], out["dn_outputs"]["pred_logits"]])
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_matching_in_threads_equals_matching_in_one():
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(5)
    L, B, Q = 3, 6, 40
    logits, boxes = torch.randn(L, B, Q, 1, generator=g), _random_boxes(g, L, B, Q)
    targets = [_random_boxes(g, n) for n in (0, 3, 17, 40, 1, 9)]
    alone = hungarian_match_layers(logits, boxes, targets)
    with ThreadPoolExecutor(3) as pool:
        threaded = hungarian_match_layers(logits, boxes, targets, executor=pool)
    assert len(threaded) == L and all(len(layer) == B for layer in threaded)
    for la, lt in zip(alone, threaded):
        for (qa, ta), (qt, tt) in zip(la, lt):
            assert torch.equal(qa, qt) and torch.equal(ta, tt)
    # the criterion's own pool stays behind when the task is copied into data workers
    import pickle

    crit = UPNCriterion()
    crit._executor()
    assert pickle.loads(pickle.dumps(crit))._pool is None


def test_upn_names_its_swin_blocks_for_compilation():
    """``train.compile`` compiles what ``UPNTask.repeated_blocks`` names: every Swin block, and nothing
    holding the deformable-attention kernel (a custom autograd function)."""
    from chatrex.upn.swin import SwinTransformerBlock

    task = UPNTask(UPNTaskConfig.from_dict({"model": "upn_tiny"}))
    model = task.build_model()
    blocks = task.repeated_blocks(model)
    depths = model.upn.config.backbone.depths
    assert len(blocks) == sum(depths) > 0 and all(isinstance(b, SwinTransformerBlock) for b in blocks)
    assert blocks == task.repeated_blocks(model.upn)
