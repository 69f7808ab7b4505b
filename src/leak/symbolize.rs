//! Symbolization of return addresses for the leak report.
