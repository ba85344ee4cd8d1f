// DepthFusion: depth → radius displacement of an equirectangular sphere.
// The GLSL twin of td_bridge/geometry.py (Displacer) and td_bridge/depth.py (DepthMapping);
// tests/test_shaders.py runs it on Mesa's llvmpipe and compares it with them.
// No #version line and no TouchDesigner built-ins: the vertex and pixel shaders of the GLSL MAT
// and the tests prepend and append their own parts (touchdesigner/shader_source.py).
//
// Conventions (docs/geometry.md): Y up, the viewer looks down -Z; image u runs left→right over
// longitude θ = 2πu − π, image v top→bottom over latitude φ = π/2 − πv. The depth texture is
// stored as TouchDesigner stores images, row 0 at the bottom, one channel, value = d ∈ [0, 1]
// (relative inverse depth, 1 = near).
//
// Frame blend (Blend Time): a new frame crossfades in from the previous one, whose textures stay bound as
// sDepthPrev / sColorPrev. At blend factor t = uBlend.x (0: the previous frame, 1: the new one) the depth is
// blended BEFORE the mapping to radius, d = mix(d_prev, d_new, t) with each frame sampled on its own (they may
// differ in size), so the sphere morphs through the radius of the mean depth; the edge test sees the blended
// surface; colour is mixed linearly. At t >= 1 nothing of the previous frame is read: the output is the
// single-frame output exactly. Numpy twins: td_bridge.depth.blend_depth, td_bridge.geometry.displace_blended.

uniform sampler2D sDepth;
uniform sampler2D sDepthPrev;  // the previous frame's depth (read only while blending)
uniform sampler2D sColor;      // colour, RGB (dfColor; the vertex stage does not use it)
uniform sampler2D sColorPrev;  // the previous frame's colour (read only while blending)
uniform vec4 uMapping;   // x: 0 linear (paper) / 1 metric, y: radius R, z: strength s, w: edge mode
uniform vec4 uRange;     // x: near, y: far (metric), z: cull jump (fraction; <= 0 keeps every edge)
uniform vec4 uPoles;     // depth at the north (x) and south (y) pole, the mean of the top/bottom row; z, w: the
                         // previous frame's
uniform vec2 uMeshStep;  // (1/cols, 1/rows) of the sphere, for the edge test
uniform vec4 uBlend;     // x: blend factor t in [0, 1], 0 shows the previous frame, 1 (no blend) the new one

const float DF_PI = 3.14159265358979;

// Image (u, v) of a unit direction; u ∈ [0, 1), v ∈ [0, 1] top → bottom.
vec2 dfImageUV(vec3 dir)
{
    float theta = atan(dir.x, -dir.z);
    float phi = atan(dir.y, length(dir.xz));  // better conditioned than asin near the poles
    return vec2(fract((theta + DF_PI) / (2.0 * DF_PI)), (0.5 * DF_PI - phi) / DF_PI);
}

// Unit direction of image (u, v).
vec3 dfDirection(vec2 uv)
{
    float theta = 2.0 * DF_PI * uv.x - DF_PI;
    float phi = 0.5 * DF_PI - DF_PI * uv.y;
    return vec3(cos(phi) * sin(theta), sin(phi), -cos(phi) * cos(theta));
}

float dfTexel(sampler2D depth, ivec2 size, int x, int y)
{
    // image row y (0 = top) lives in texture row size.y - 1 - y
    return texelFetch(depth, ivec2(x, size.y - 1 - y), 0).r;
}

// Depth of one frame's texture at image (u, v), away from the poles: bilinear between pixel centres,
// wrapping across the 0°/360° seam and clamping at the top and bottom rows.
float dfBilinear(sampler2D depth, vec2 uv)
{
    ivec2 size = textureSize(depth, 0);
    float x = uv.x * float(size.x) - 0.5;
    float y = clamp(uv.y * float(size.y) - 0.5, 0.0, float(size.y - 1));
    float x0f = floor(x);
    float y0f = floor(y);
    float fx = x - x0f;
    float fy = y - y0f;
    int x0 = int(mod(x0f, float(size.x)));
    int x1 = (x0 + 1) % size.x;
    int y0 = int(y0f);
    int y1 = min(y0 + 1, size.y - 1);
    float top = mix(dfTexel(depth, size, x0, y0), dfTexel(depth, size, x1, y0), fx);
    float bottom = mix(dfTexel(depth, size, x0, y1), dfTexel(depth, size, x1, y1), fx);
    return mix(top, bottom, fy);
}

float dfBlendFactor()
{
    return clamp(uBlend.x, 0.0, 1.0);
}

// Depth at image (u, v) (dfBilinear; the poles take uPoles so each stays a single point), blended from the
// previous frame's while a blend runs.
float dfSampleDepth(vec2 uv, bool pole, bool north)
{
    float d = pole ? (north ? uPoles.x : uPoles.y) : dfBilinear(sDepth, uv);
    float t = dfBlendFactor();
    if (t >= 1.0)
        return d;
    float before = pole ? (north ? uPoles.z : uPoles.w) : dfBilinear(sDepthPrev, uv);
    return mix(before, d, t);
}

// Colour at image (u, v), blended from the previous frame's while a blend runs (row 0 is the bottom in TD).
vec3 dfColor(vec2 uv)
{
    vec2 st = vec2(uv.x, 1.0 - uv.y);
    vec3 color = textureLod(sColor, st, 0.0).rgb;
    float t = dfBlendFactor();
    if (t >= 1.0)
        return color;
    return mix(textureLod(sColorPrev, st, 0.0).rgb, color, t);
}

// Radius for depth d: the paper's linear rule or the metric mapping (non-finite d as numpy does).
float dfRadius(float d)
{
    bool finite = !(isnan(d) || isinf(d));
    if (uMapping.x < 0.5)
        return uMapping.y * (1.0 + uMapping.z * (0.5 - (finite ? clamp(d, 0.0, 1.0) : 0.5)));
    float a = 1.0 / uRange.x - 1.0 / uRange.y;
    return 1.0 / (a * (finite ? clamp(d, 0.0, 1.0) : 0.0) + 1.0 / uRange.y);
}

float dfRadiusAt(vec2 uv)
{
    bool pole = uv.y <= 0.0 || uv.y >= 1.0;
    return dfRadius(dfSampleDepth(clamp(uv, vec2(0.0), vec2(1.0)), pole, uv.y <= 0.0));
}

// xyz: the displaced position of unit direction dir; w: 1, or 0 where the surface jumps by more
// than the cull fraction between this vertex and a neighbour one mesh step away (a depth edge,
// which would otherwise be stretched into a rubber sheet).
vec4 dfDisplace(vec3 dir)
{
    vec2 uv = dfImageUV(dir);
    bool pole = abs(dir.y) > 0.9999999;
    float r = dfRadius(dfSampleDepth(uv, pole, dir.y > 0.0));
    float keep = 1.0;
    if (uRange.z > 0.0 && !pole) {
        float near = r;
        float far = r;
        for (int k = 0; k < 4; ++k) {
            vec2 offset = k == 0 ? vec2(uMeshStep.x, 0.0) : k == 1 ? vec2(-uMeshStep.x, 0.0)
                        : k == 2 ? vec2(0.0, uMeshStep.y) : vec2(0.0, -uMeshStep.y);
            float rn = dfRadiusAt(vec2(fract(uv.x + offset.x), uv.y + offset.y));
            near = min(near, rn);
            far = max(far, rn);
        }
        keep = far - near > uRange.z * max(near, 1e-12) ? 0.0 : 1.0;
    }
    return vec4(dir * r, keep);
}

// Opacity of a fragment whose interpolated edge flag is keep (see dfDisplace) under the edge mode
// uMapping.w: 0 keeps rubber sheets (1), 1 culls them (a negative value: discard the fragment), 2 fades
// them out (keep). Shared by the GLSL MAT's pixel stage and the renderer's ODS ray caster.
float dfEdgeAlpha(float keep)
{
    if (uMapping.w > 0.5 && uMapping.w < 1.5)
        return keep < 0.999 ? -1.0 : 1.0;
    return uMapping.w > 1.5 ? keep : 1.0;
}
