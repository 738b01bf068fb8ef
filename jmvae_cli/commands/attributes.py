"""`jmvae attributes`: the model's attribute names."""

import json


from jmvae_cli.commands import common


def attributes(
    format: common.FormatOpt = None,
    weights: common.WeightsOpt = None,
    verbose: common.VerboseOpt = False,
):
    """List the model's attribute names, one per line (or a JSON list with --format json)."""
    tr = common.load_translator(weights, common.Device.cpu, verbose)
    if format == common.Format.json:
        print(json.dumps(tr.attr_names))
    elif format == common.Format.jsonl:
        print("\n".join(json.dumps(n) for n in tr.attr_names))
    else:
        print("\n".join(tr.attr_names))
