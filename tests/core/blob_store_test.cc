#include <gtest/gtest.h>
// filled in by the foundation storage work
