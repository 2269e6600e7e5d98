"""BPF programs (C, compiled by bcc at run time) and the header they share with the loader."""
