"""NanoEvents schema for basf2-style event-based ntuples.

Jagged candidate branches sharing a prefix (``K_*`` in the ITA tree, ``Btag_*`` in the HTA
tree) are zipped into one collection (``events.K.q2rec``); their counters (``nK``) and every
event-level branch stay top-level fields. :meth:`Belle2Schema.renamed` gives the schema of a
file whose branches carry other names (basf2 names, aliases).
"""

from __future__ import annotations

from collections.abc import Mapping

from coffea.nanoevents.schemas.base import BaseSchema, zip_forms

from knunu.simulation.ntuple import COLLECTIONS


class Belle2Schema(BaseSchema):
    """basf2 VariablesToEventBasedTree layout -> NanoEvents with candidate collections."""

    #: File branch -> analysis name (empty: the file uses the analysis names).
    renames: Mapping[str, str] = {}

    def __init__(self, base_form: dict, *args: object, **kwargs: object) -> None:
        super().__init__(base_form, *args, **kwargs)
        branches = dict(zip(self._form["fields"], self._form["contents"], strict=True))
        if self.renames:  # the file's own branch of a renamed name gives way to the alias
            targets = set(self.renames.values())
            branches = {
                self.renames.get(k, k): v
                for k, v in branches.items()
                if k in self.renames or k not in targets
            }
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

    @classmethod
    def renamed(cls, renames: Mapping[str, str]) -> type[Belle2Schema]:
        """This schema for a file whose branches are named ``renames``' keys."""
        return type("RenamedBelle2Schema", (cls,), {"renames": dict(renames)})
