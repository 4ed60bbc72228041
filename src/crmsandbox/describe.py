"""Describe results (global and per object), compiled once per API version and cached as JSON bytes."""

from __future__ import annotations

import json
from typing import Any

from crmsandbox.metadata import ObjectDef, Registry

_MASTER_RT = "012000000000000AAA"


class DescribeCache:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._global: dict[str, bytes] = {}
        self._objects: dict[tuple[str, str], bytes] = {}

    def global_entry(self, o: ObjectDef, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{o.name}"
        return {
            "activateable": False, "associateEntityType": None, "associateParentEntity": None,
            "createable": o.createable, "custom": False, "customSetting": False, "deepCloneable": False,
            "deletable": o.deletable, "deprecatedAndHidden": False, "feedEnabled": False,
            "hasSubtypes": o.name == "Account", "isInterface": False, "isSubtype": False,
            "keyPrefix": o.key_prefix, "label": o.label, "labelPlural": o.label_plural, "layoutable": True,
            "mergeable": o.name in ("Lead", "Contact", "Account"), "mruEnabled": True, "name": o.name,
            "queryable": True, "replicateable": True, "retrieveable": True, "searchable": True,
            "triggerable": True, "undeletable": o.deletable, "updateable": o.updateable,
            "urls": {"rowTemplate": f"{base}/{{ID}}", "defaultValues": f"{base}/defaultValues?recordTypeId&fields",
                     "describe": f"{base}/describe", "sobject": base},
        }

    def global_json(self, version: str) -> bytes:
        hit = self._global.get(version)
        if hit is None:
            body = {"encoding": "UTF-8", "maxBatchSize": 200,
                    "sobjects": [self.global_entry(o, version) for o in self.registry.objects.values()]}
            hit = json.dumps(body, separators=(",", ":")).encode()
            self._global[version] = hit
        return hit

    def object_json(self, o: ObjectDef, version: str) -> bytes:
        key = (o.name, version)
        hit = self._objects.get(key)
        if hit is None:
            base = f"/services/data/v{version}/sobjects/{o.name}"
            d = self.global_entry(o, version)
            d.update({
                "actionOverrides": [], "childRelationships": o.child_relationships, "compactLayoutable": True,
                "defaultImplementation": None, "extendedBy": None, "extendsInterfaces": None,
                "fields": [f.describe() for f in o.fields.values()], "implementedBy": None,
                "implementsInterfaces": None, "listviewable": None, "lookupLayoutable": None,
                "namedLayoutInfos": [], "networkScopeFieldName": None,
                "recordTypeInfos": [{"active": True, "available": True, "defaultRecordTypeMapping": True,
                                     "developerName": "Master", "master": True, "name": "Master",
                                     "recordTypeId": _MASTER_RT,
                                     "urls": {"layout": f"{base}/describe/layouts/{_MASTER_RT}"}}],
                "searchLayoutable": True, "sobjectDescribeOption": "FULL", "supportedScopes": [
                    {"label": "All " + o.label_plural.lower(), "name": "everything"},
                    {"label": "My " + o.label_plural.lower(), "name": "mine"}],
            })
            d["urls"].update({"compactLayouts": f"{base}/describe/compactLayouts",
                              "approvalLayouts": f"{base}/describe/approvalLayouts",
                              "layouts": f"{base}/describe/layouts"})
            hit = json.dumps(d, separators=(",", ":")).encode()
            self._objects[key] = hit
        return hit
