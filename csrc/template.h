/* template.h — compiles the templated half of FN_TEMPLATE_FILE once per dtype.
 *
 * See the comment "dtype templates" in internal.h. Inside the templated half, `real` is the element
 * type, FN_T(name) appends _f32 or _f64, and FN_DTYPE is FN_FLOAT32 or FN_FLOAT64.
 */
#ifndef FN_TEMPLATE_FILE
#error "define FN_TEMPLATE_FILE before including template.h"
#endif

#define FN_TEMPLATE_PASS 1

#define real float
#define FN_T(name) name##_f32
#define FN_DTYPE FN_FLOAT32
#include FN_TEMPLATE_FILE
#undef real
#undef FN_T
#undef FN_DTYPE

#define real double
#define FN_T(name) name##_f64
#define FN_DTYPE FN_FLOAT64
#include FN_TEMPLATE_FILE
#undef real
#undef FN_T
#undef FN_DTYPE

#undef FN_TEMPLATE_PASS
#undef FN_TEMPLATE_FILE
