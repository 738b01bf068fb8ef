"""Attribute coding: names, the strength coding, the one change syntax, and img2attr's records read back."""

import json
import math

import numpy as np
import pytest
import torch

from jmvae_cli import attributes
from jmvae_cli.attributes import (
    AttributeNameError,
    AttributeSpecError,
    AttrsFileError,
    Change,
)
from tests.model_fixtures import ATTRS

# ATTRS = Smiling, Male, Eyeglasses, Blond_Hair, Young


def test_attr_index_is_case_insensitive_and_suggests():
    assert attributes.attr_index("smiling", ATTRS) == 0
    assert attributes.attr_index("blond-hair", ATTRS) == 3
    assert attributes.attr_index("BLOND HAIR", ATTRS) == 3
    with pytest.raises(AttributeNameError, match="did you mean Smiling"):
        attributes.attr_index("Smilng", ATTRS)
    with pytest.raises(AttributeNameError) as e:
        attributes.attr_index("Wearing_Hat", ATTRS)
    assert "did you mean" not in str(e.value)


def test_presence_threshold_is_inclusive_for_tensors_and_arrays():
    assert attributes.present(np.array([0.4999, 0.5, 0.9])).tolist() == [False, True, True]
    assert attributes.present(torch.tensor([0.5])).item()
    assert attributes.binarize(np.array([0.2, 0.5])).tolist() == [0.0, 1.0]
    assert attributes.binarize(np.array([0.2, 0.5]), soft=True).tolist() == [0.2, 0.5]


def test_coded_is_the_papers_plus_minus_strength():
    assert attributes.coded(True, 2.0) == 1.5 and attributes.coded(False, 2.0) == -0.5  # the paper's +-2
    assert attributes.coded(True, 1.0) == 1.0 and attributes.coded(False, 1.0) == 0.0  # plain on / off
    assert attributes.coded(True, 0.0) == 0.5
    for bad in (-1.0, math.nan, math.inf, attributes.MAX_STRENGTH + 1):
        with pytest.raises(AttributeSpecError, match="not a number from 0 to 10"):
            attributes.coded(True, bad)


def test_parse_change_forms():
    p = attributes.parse_change
    assert p("Male", ATTRS) == Change(1, "Male", True)
    assert p("+male", ATTRS) == Change(1, "Male", True)
    assert p("-Smiling", ATTRS) == Change(0, "Smiling", False)
    assert p("not Young", ATTRS) == Change(4, "Young", False)
    assert p("Not_Blond_Hair", ATTRS) == Change(3, "Blond_Hair", False)
    assert p("~Eyeglasses", ATTRS, flip=True) == Change(2, "Eyeglasses", None)
    assert p("Eyeglasses", ATTRS, flip=True, bare=None) == Change(2, "Eyeglasses", None)  # figure edit's bare name
    assert p("Smiling=3", ATTRS) == Change(0, "Smiling", True, 3.0)
    assert p("-smiling = 0.5", ATTRS) == Change(0, "Smiling", False, 0.5)
    with pytest.raises(AttributeNameError, match="Bald"):
        p("Bald", ATTRS)
    with pytest.raises(AttributeSpecError, match="flipping"):
        p("~Male", ATTRS)  # no face to flip
    for bad in ("Smiling=x", "Smiling=", "Smiling=nan", "Smiling=inf", "Smiling=-1", "Smiling=11", "Smiling=1e400"):
        with pytest.raises(AttributeSpecError, match="Smiling"):
            p(bad, ATTRS)


def test_an_attribute_named_not_something_is_itself():
    names = ["Not_Tall", "Tall"]
    assert attributes.parse_change("Not_Tall", names) == Change(0, "Not_Tall", True)
    assert attributes.parse_change("not Tall", names) == Change(0, "Not_Tall", True)  # spelt as the name, it is it
    assert attributes.parse_change("-Not_Tall", names) == Change(0, "Not_Tall", False)


def test_change_values():
    assert Change(0, "Smiling", True).value() == 1.5
    assert Change(0, "Smiling", False).value(1.0) == 0.0
    assert Change(0, "Smiling", True, 3.0).value(1.0) == 2.0  # its own strength wins
    flip = Change(0, "Smiling", None)
    assert flip.value(2.0, present_now=True) == -0.5 and flip.value(2.0, present_now=False) == 1.5
    assert flip.direction(True) is False
    with pytest.raises(AttributeSpecError, match="flipping needs a face"):
        flip.value()


def test_set_and_unset():
    changes = attributes.parse_set_unset(["Smiling", "eyeglasses=4"], ["male"], ATTRS)
    assert attributes.values(changes, 2.0) == {0: 1.5, 2: 2.5, 1: -0.5}
    assert attributes.values(attributes.parse_set_unset(["Smiling"], [], ATTRS), 1.0) == {0: 1.0}
    assert attributes.values(attributes.parse_set_unset([], ["Smiling=3"], ATTRS)) == {0: -1.0}
    with pytest.raises(AttributeSpecError, match="both --set and --unset"):
        attributes.parse_set_unset(["Smiling"], ["SMILING"], ATTRS)
    for spec in ("-Smiling", "~Smiling", "not Smiling"):  # the option says the direction
        with pytest.raises(AttributeSpecError, match="give the attribute's name"):
            attributes.parse_set_unset([spec], [], ATTRS)


# ----------------------------------------------------------------------------- img2attr's records


RECORD = {
    "file": "a.jpg",
    "attributes": {"Smiling": 0.9, "Male": 0.2, "Eyeglasses": 0.0, "Blond_Hair": 0.7, "Young": 1},
}


@pytest.mark.parametrize("kind", ["json", "json-dict", "jsonl", "csv", "tsv"])
def test_read_record_formats(kind):
    header, row = ["file", *ATTRS], ["a.jpg", *map(str, RECORD["attributes"].values())]
    text = {
        "json": json.dumps([RECORD, {"file": "b.jpg", "attributes": {}}], indent=2),
        "json-dict": json.dumps(RECORD),
        "jsonl": json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n",
        "csv": ",".join(header) + "\n" + ",".join(row) + "\n",
        "tsv": "\t".join(header) + "\n" + "\t".join(row) + "\n",
    }[kind]
    w, file = attributes.read_record(text, ATTRS)
    assert file == "a.jpg"
    assert np.allclose(w, [0.9, 0.2, 0.0, 0.7, 1.0])


def test_read_record_subset_and_errors():
    w, _ = attributes.read_record(json.dumps({"file": "a", "face": 1, "attributes": {"smiling": 0.8}}), ATTRS)
    assert np.allclose(w, [0.8, 0, 0, 0, 0])  # --only-positive output: the rest are absent
    for text, msg in [
        ("", "empty"),
        ("[]", "no records"),
        ('{"attributes": {"Smilling": 1}}', "did you mean Smiling"),
        ('{"attributes": {"Smiling": "yes"}}', "not a number"),
        ("file,Smiling\n", "header and at least one row"),
        ("{not json", "not valid JSON"),
    ]:
        with pytest.raises(AttrsFileError, match=msg):
            attributes.read_record(text, ATTRS, "x.json")


@pytest.mark.parametrize(
    "text",
    ['{"Smiling": NaN}', '{"Smiling": Infinity}', '{"Smiling": 1e400}', "Smiling\nnan\n", "Smiling,Male\n0.5,-inf\n"],
)
def test_read_record_refuses_non_finite_values(text):
    with pytest.raises(AttrsFileError, match=r"x.json: (Smiling|Male) = .* is not a finite number"):
        attributes.read_record(text, ATTRS, "x.json")


@pytest.mark.parametrize("value", ["7", "-3", "-1", "1.0001"])
def test_read_record_refuses_values_that_are_not_probabilities(value):
    with pytest.raises(AttrsFileError, match=rf"Smiling = {value} is not a probability in \[0, 1\].*--set Smiling="):
        attributes.read_record(f'{{"Smiling": {value}}}', ATTRS, "x.json")
