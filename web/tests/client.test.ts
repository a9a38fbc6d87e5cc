import { describe, expect, it } from 'vitest'
import { ApiError, errorFrom, sameServerUrl } from '../src/api/client'
import { describeError } from '../src/lib/errors'
import { locale } from '../src/i18n'

describe('API errors', () => {
  it('read the envelope and Retry-After', () => {
    const error = errorFrom(503, '{"error":{"code":"queue_full","message":"The queue for `relief` is full (5 waiting); retry later."},"request_id":"r"}', '10')
    expect(error).toMatchObject({ code: 'queue_full', status: 503, retryAfter: 10 })
  })

  it('survive a body that is not the envelope', () => {
    expect(errorFrom(502, '<html>Bad gateway</html>', null)).toMatchObject({ code: 'http_error', status: 502, retryAfter: null })
  })

  it('are said in plain words, with the time to wait when the queue is full', () => {
    const full = new ApiError('queue_full', 'The queue for `relief` is full (5 waiting); retry later.', 503, 10)
    locale.value = 'en'
    expect(describeError(full).text).toBe('The queue for `relief` is full (5 waiting); retry later. Try again in 10 s.')
    expect(describeError(full).retryAfter).toBe(10)
    locale.value = 'zh-CN'
    expect(describeError(full).text).toBe('队列已满。 请在 10 秒后重试。')
    expect(describeError({ code: 'generation_timeout', message: 'Generation timeout: the task did not finish within 600 s.' }).text).toBe(
      '生成超时：模型未能按时完成。',
    )
    expect(describeError(new ApiError('file_too_large', 'File too large: the limit is 10 MB.', 413)).text).toBe('文件过大：上限为 10 MB。')
    // A code the page does not know still shows the server's words.
    expect(describeError({ code: 'brand_new', message: 'Something new.' }).text).toBe('Something new.')
    locale.value = 'en'
  })
})

describe('sameServerUrl', () => {
  const self = 'http://127.0.0.1:8080/api/v1/tasks/abc'
  it('makes this server’s file URLs relative to the page’s origin', () => {
    expect(sameServerUrl('http://127.0.0.1:8080/files/outputs/abc/model.glb', self, 'http://localhost:8080')).toBe(
      'http://localhost:8080/files/outputs/abc/model.glb',
    )
  })
  it('keeps URLs of other hosts (object storage) as they are', () => {
    expect(sameServerUrl('https://bucket.cos.example.com/outputs/abc/model.glb', self, 'http://localhost:8080')).toBe(
      'https://bucket.cos.example.com/outputs/abc/model.glb',
    )
    expect(sameServerUrl('http://x/files/a', null, 'http://y')).toBe('http://x/files/a')
  })
})
