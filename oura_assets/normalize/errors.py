"""The one error the normalizers raise, so callers catch a single type and report its reason.

A message names the collection, the document id and the field; `reason` keeps the bare cause for the
rejection reports that already name the document themselves.
"""

from __future__ import annotations


class NormalizationError(ValueError):
    """An Oura document that does not have the documented shape; names the collection, id and field."""

    def __init__(self, message: str, *, collection: str | None = None, document_id: str | None = None):
        self.collection = collection
        self.document_id = document_id
        self.reason = message
        where = f"{collection or 'document'}" + (f" document {document_id!r}" if document_id else "")
        super().__init__(f"{where}: {message}" if collection or document_id else message)
