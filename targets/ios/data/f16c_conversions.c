/* fp16 <-> fp32 conversions by the CPU's F16C instructions, under the compiler runtime's names.
 * Loaded before Apple's Core AI interpreter (see targets/ios/fp16_conversions.py); each is one instruction,
 * IEEE round-to-nearest-even, the same results as libswiftCore's software versions. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

_Float16 __truncsfhf2(float value) {
    uint16_t bits = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(value), _MM_FROUND_TO_NEAREST_INT), 0);
    _Float16 half;
    memcpy(&half, &bits, sizeof half);
    return half;
}

float __extendhfsf2(_Float16 half) {
    uint16_t bits;
    memcpy(&bits, &half, sizeof bits);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
}
