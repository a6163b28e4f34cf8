"""The native ExecuTorch runner: a C++ device server (runner.cpp) built per architecture by build.py."""
