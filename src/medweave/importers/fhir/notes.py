"""Clinical text in FHIR: note codes, base64 text attachments and XHTML narratives."""

from __future__ import annotations

from html.parser import HTMLParser

from medweave.data import contract as c


def note_code(concept, default: str) -> tuple[str, str | None]:
    """NOTE//<type code> (e.g. NOTE//34117-2), described by the type's display text."""
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return f"{c.NOTE_PREFIX}{coding.code}", coding.display or getattr(concept, "text", None)
    text = getattr(concept, "text", None)
    if text:
        return f"{c.NOTE_PREFIX}{'_'.join(text.lower().split())}", text
    return f"{c.NOTE_PREFIX}{default}", f"Clinical note ({default})"


def attachments_text(attachments, field: str) -> tuple[list[str], list[str]]:
    """The text of inline text/* attachments, and why the others were left out.

    Raises mappers.Fault for an attachment that claims to be text but does not decode."""
    from medweave.importers.fhir.mappers import Fault

    texts, left_out = [], []
    for i, a in enumerate(attachments):
        kind = (a.contentType or "text/plain").split(";")[0].strip().lower()
        if a.data is None:
            left_out.append("attachment has no inline data (url only)")
            continue
        if not kind.startswith("text/"):
            left_out.append(f"attachment is not text ({kind})")
            continue
        try:
            text = a.data.decode(charset(a.contentType))
        except (UnicodeDecodeError, LookupError):
            raise Fault(
                f"{field}[{i}].attachment.data", f"expected base64 of {kind} text in {charset(a.contentType)}"
            ) from None
        texts.append(html_text(text) if kind == "text/html" else text)
    return texts, left_out


def charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


class _TextOnly(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(html: str) -> str:
    """The text of an XHTML narrative (FHIR's div), through the standard library's HTML parser."""
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    return " ".join(" ".join(parser.parts).split())
