"""Zero-shot segmentation from second-order effects, baselines, metrics and dataset readers."""
