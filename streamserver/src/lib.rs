//! Local stream server through which child processes open named log streams.
