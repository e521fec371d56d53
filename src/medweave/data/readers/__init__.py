"""One reader per file format; each raises MedweaveError naming the file and what was expected."""
