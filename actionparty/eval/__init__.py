"""Evaluation: detectors trained on ground truth, metrics, and the per-variant metrics JSON.

    config.py       EvalConfig: the profile's ``eval:`` section
    detectors.py    TileClassifier (who and which facing in each cell), InverseDynamics (which
                    action between two frames); training, held-out accuracy, checkpoint bundle
    metrics.py      MA, SP, DR, EA, BA, ST, PSNR, SSIM, FD, I3D-FVD as pure functions
    evaluate.py     rollouts (or the oracle's ground truth) -> results/metrics/{variant}.json
    metrics_file.py that file's schema, its one writer and reader (evaluate, combine-metrics, report)
    curve.py        learning curves: MA and BA of a finetune's snapshots on a test subset
    commands.py     CLI: train-detectors, evaluate, evaluate-oracle, curve, combine-metrics

See docs/EVALUATION.md for the definitions and the choices behind them.
"""
