"""NanoEvents schema for basf2-style event-based ntuples.

Jagged candidate branches sharing a prefix (``K_*`` in the ITA tree, ``Btag_*`` in the HTA
tree) are zipped into one collection (``events.K.q2rec``); their counters (``nK``) and every
event-level branch stay top-level fields.
"""

from __future__ import annotations

from coffea.nanoevents.schemas.base import BaseSchema, zip_forms

#: Candidate prefixes zipped into collections (prefix -> collection name).
COLLECTIONS = {"K_": "K", "Btag_": "Btag"}


class Belle2Schema(BaseSchema):
    """basf2 VariablesToEventBasedTree layout -> NanoEvents with candidate collections."""

    def __init__(self, base_form: dict, *args: object, **kwargs: object) -> None:
        super().__init__(base_form, *args, **kwargs)
        branches = dict(zip(self._form["fields"], self._form["contents"], strict=True))
        output: dict[str, dict] = {}
        grouped: dict[str, dict[str, dict]] = {}
        for name, form in branches.items():
            prefix = next((p for p in COLLECTIONS if name.startswith(p)), None)
            if prefix is None:
                output[name] = form
            else:
                grouped.setdefault(COLLECTIONS[prefix], {})[name[len(prefix) :]] = form
        for collection, forms in grouped.items():
            output[collection] = zip_forms(forms, collection)
        self._form["fields"] = list(output)
        self._form["contents"] = list(output.values())
