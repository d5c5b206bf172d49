"""ml_collections configs: `python -m experiments.<cli> --config configs/<name>.py --config.x=y`."""
