"""`jmvae attributes`: the model's attribute names."""

from jmvae_cli import formats
from jmvae_cli.commands import common


def attributes(
    format: common.FormatOpt = None,
    weights: common.WeightsOpt = None,
    verbose: common.VerboseOpt = False,
):
    """List the model's attribute names, one per line (or a JSON list with --format json)."""
    tr = common.load_translator(weights, common.Device.cpu, verbose)
    writer = formats.FORMATS[format.value] if format else formats.Writer
    print(writer.name_list(tr.attr_names))
