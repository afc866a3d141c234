// The helpers are static inline functions in include/SwiftUNetSupport.h; a C target
// needs one source file of its own.
#include "SwiftUNetSupport.h"
